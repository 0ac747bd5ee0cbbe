// The JavaScript/TypeScript side of js_kernel.py: evaluates cells in one
// global scope, one at a time. Cells come as JSON lines on fd 3; each answer
// is one JSON line on fd 3, written after a marker on stdout and on stderr
// (so that the kernel knows it has read all of the cell's output first).
'use strict';

const net = require('net');
const path = require('path');
const util = require('util');
const vm = require('vm');
const Module = require('module');
const readline = require('readline');

const TYPESCRIPT = '/opt/sbx/node_modules/typescript';
let ts = null;

// Cells require() modules from their working directory, as a script there would.
globalThis.require = Module.createRequire(path.join(process.cwd(), '[cell]'));
globalThis.module = { exports: {} };
globalThis.exports = globalThis.module.exports;
globalThis.__filename = path.join(process.cwd(), '[cell]');
globalThis.__dirname = process.cwd();

// A SIGINT between cells (a late interrupt) must not end the process.
let interruptAsync = null;
process.on('SIGINT', () => {
  if (interruptAsync) interruptAsync(new Error('Interrupted'));
});

function transpile(code) {
  if (ts === null) ts = require(TYPESCRIPT);
  return ts.transpileModule(code, {
    compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.None },
    reportDiagnostics: false,
  }).outputText;
}

function compile(code) {
  try {
    return { script: new vm.Script(code, { filename: '<cell>' }) };
  } catch (err) {
    if (!(err instanceof SyntaxError) || !/await/.test(String(err.message))) throw err;
    // Top-level await: the cell runs as an async function, its last line
    // returned when it is an expression; its declarations stay local to it
    // (assign to globalThis to keep them).
    const lines = code.replace(/\s+$/, '').split('\n');
    const last = lines.pop() || '';
    const returned = `${lines.join('\n')}\nreturn (${last.replace(/;\s*$/, '')});`;
    for (const body of [returned, code]) {
      try {
        return { script: new vm.Script(`(async () => {\n${body}\n})()`, { filename: '<cell>' }) };
      } catch (_) { /* the next form */ }
    }
    throw err;
  }
}

function show(value) {
  if (value === undefined) return null;
  return typeof value === 'string' ? util.inspect(value) : util.inspect(value, { depth: 4 });
}

async function run(cell) {
  let code = cell.code;
  if (cell.typescript) code = transpile(code);
  const { script } = compile(code);
  let value = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
  if (value && typeof value.then === 'function') {
    value = await new Promise((resolve, reject) => {
      interruptAsync = reject;
      value.then(resolve, reject);
    }).finally(() => { interruptAsync = null; });
  }
  return show(value);
}

const control = new net.Socket({ fd: 3, readable: true, writable: true });
const input = readline.createInterface({ input: control });
const queue = [];
let busy = false;

async function next() {
  if (busy || queue.length === 0) return;
  busy = true;
  const cell = queue.shift();
  let answer;
  try {
    answer = { id: cell.id, ok: true, value: await run(cell) };
  } catch (err) {
    const e = err instanceof Error ? err : new Error(String(err));
    // The cell's own frames only, not this file's or node's.
    const stack = String(e.stack || err).split('\n')
      .filter((l) => !/\(node:|js_repl\.js|at node:/.test(l)).join('\n');
    answer = { id: cell.id, ok: false, name: e.name || 'Error', message: e.message || '', stack };
  }
  const marker = `\u0000sbx-end-${cell.id}\u0000`;
  process.stdout.write(marker, () => process.stderr.write(marker, () => {
    control.write(JSON.stringify(answer) + '\n');
    busy = false;
    next();
  }));
}

input.on('line', (line) => {
  if (!line.trim()) return;
  queue.push(JSON.parse(line));
  next();
});
input.on('close', () => process.exit(0));
