// Drives a running sbx with the real JavaScript SDKs (`@e2b/code-interpreter`,
// `e2b`), installed by the test into SBX_NPM_DIR. Prints one JSON line per
// check: {"check", "ok", "detail"}.
//
// Usage: E2B_API_URL=... E2B_SANDBOX_URL=... E2B_API_KEY=... SBX_NPM_DIR=... \
//   node js_driver.cjs [interpreter|base]
'use strict';

const path = require('path');
const { createRequire } = require('module');

const load = createRequire(path.join(process.env.SBX_NPM_DIR, 'package.json'));
const results = [];

async function check(name, fn) {
  const t0 = Date.now();
  try {
    const detail = await fn();
    results.push({ check: name, ok: true, detail: String(detail).slice(0, 300),
      seconds: (Date.now() - t0) / 1000 });
    return detail;
  } catch (err) {
    results.push({ check: name, ok: false, detail: String(err && err.stack || err).slice(0, 1500) });
    return undefined;
  }
}

function expect(cond, what) {
  if (!cond) throw new Error(`expected: ${typeof what === 'string' ? what : JSON.stringify(what)}`);
}

async function interpreterChecks() {
  const { Sandbox } = load('@e2b/code-interpreter');
  const e2b = load('e2b');
  const sbx = await check('Sandbox.create() (code-interpreter-v1)',
    () => Sandbox.create({ timeoutMs: 300_000, envs: { SANDBOX_VAR: 'sv' } }));
  if (!sbx) return;
  try {
    await check('runCode 1+1 (Python)', async () => {
      const ex = await sbx.runCode('1+1');
      expect(ex.text === '2' && ex.results[0].isMainResult, ex.results);
      expect(Number.isInteger(ex.executionCount), ex.executionCount);
      return ex.text;
    });
    await check('onStdout, onStderr, onResult, onError', async () => {
      const out = []; const err = []; const res = []; const errs = [];
      const ex = await sbx.runCode(
        "import sys\nprint('o')\nprint('e', file=sys.stderr)\nfrom IPython.display import HTML, display\n"
        + "display(HTML('<i>x</i>'))\n1/0",
        { onStdout: (m) => out.push(m.line), onStderr: (m) => err.push(m.line),
          onResult: (r) => res.push(r), onError: (e) => errs.push(e) });
      expect(out.join('') === 'o\n' && err.join('') === 'e\n', { out, err });
      expect(res.length === 1 && res[0].html === '<i>x</i>', res);
      expect(errs.length === 1 && errs[0].name === 'ZeroDivisionError', errs);
      expect(ex.error && ex.error.value === 'division by zero', ex.error);
      return 'callbacks';
    });
    await check('chart from matplotlib', async () => {
      const ex = await sbx.runCode(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2], [3, 4]); plt.title('T'); plt.show()");
      const chart = ex.results.map((r) => r.chart).find(Boolean);
      expect(chart && chart.type === 'line' && chart.title === 'T', chart);
      expect(JSON.stringify(chart.elements[0].points) === '[[1,3],[2,4]]', chart.elements);
      expect(ex.results.some((r) => r.png), 'png');
      return chart.type;
    });
    await check('envs per call and the sandbox\'s', async () => {
      const ex = await sbx.runCode("import os; (os.environ.get('CELL'), os.environ.get('SANDBOX_VAR'))",
        { envs: { CELL: 'c' } });
      expect(ex.text === "('c', 'sv')", ex.text);
      return ex.text;
    });
    await check('language js: state, console, await, errors', async () => {
      let ex = await sbx.runCode("const a = 21; console.log('hi'); a * 2", { language: 'js' });
      expect(ex.text === '42' && ex.logs.stdout.join('') === 'hi\n', ex);
      ex = await sbx.runCode('await new Promise((r) => setTimeout(() => r(a + 1), 50))',
        { language: 'js' });
      expect(ex.text === '22', ex.text);
      ex = await sbx.runCode("throw new RangeError('nope')", { language: 'js' });
      expect(ex.error && ex.error.name === 'RangeError' && ex.error.value === 'nope', ex.error);
      ex = await sbx.runCode('process.env.CELL', { language: 'js', envs: { CELL: 'j' } });
      expect(ex.text === "'j'", ex.text);
      return 'js';
    });
    await check('language ts', async () => {
      const ex = await sbx.runCode(
        'interface P { x: number }\nconst p: P = { x: 5 };\np.x * 2', { language: 'ts' });
      expect(ex.error === undefined && ex.text === '10', ex);
      return ex.text;
    });
    await check('language bash', async () => {
      const ex = await sbx.runCode('echo $((6*7))', { language: 'bash' });
      expect(ex.logs.stdout.join('') === '42\n', ex.logs);
      return '42';
    });
    await check('contexts: create, list, restart, remove', async () => {
      const ctx = await sbx.createCodeContext({ language: 'python', cwd: '/tmp' });
      expect(ctx.language === 'python' && ctx.cwd === '/tmp' && ctx.id, ctx);
      await sbx.runCode('v = 3', { context: ctx });
      let ex = await sbx.runCode('v', { context: ctx });
      expect(ex.text === '3', ex.text);
      ex = await sbx.runCode('v');
      expect(ex.error && ex.error.name === 'NameError', 'isolated');
      const listed = (await sbx.listCodeContexts()).map((c) => c.id);
      expect(listed.includes(ctx.id), listed);
      await sbx.restartCodeContext(ctx);
      ex = await sbx.runCode('v', { context: ctx });
      expect(ex.error && ex.error.name === 'NameError', 'restarted');
      await sbx.removeCodeContext(ctx);
      const after = (await sbx.listCodeContexts()).map((c) => c.id);
      expect(!after.includes(ctx.id), after);
      return ctx.id;
    });
    await check('timeoutMs interrupts an infinite loop; the context goes on', async () => {
      await sbx.runCode('kept = 1');
      let timedOut = false;
      try {
        await sbx.runCode('while True:\n    pass', { timeoutMs: 2000 });
      } catch (err) {
        timedOut = err instanceof e2b.TimeoutError;
      }
      expect(timedOut, 'TimeoutError');
      const ex = await sbx.runCode('kept + 1');
      expect(ex.text === '2', ex.text);
      return 'interrupted';
    });
    await check('files and commands', async () => {
      await sbx.files.write('/home/user/in.txt', 'data');
      const ex = await sbx.runCode("open('/home/user/in.txt').read()");
      expect(ex.text === "'data'", ex.text);
      const r = await sbx.commands.run('whoami');
      expect(r.stdout === 'user\n', r.stdout);
      return 'ok';
    });
    await check('pause and connect keep the kernel', async () => {
      await sbx.runCode('before_pause = 11');
      await sbx.pause();
      const again = await Sandbox.connect(sbx.sandboxId);
      const ex = await again.runCode('before_pause * 2');
      expect(ex.text === '22', ex.text);
      return ex.text;
    });
  } finally {
    await check('kill', () => sbx.kill());
  }
}

async function baseChecks() {
  const { Sandbox } = load('e2b');
  const sbx = await check('e2b Sandbox.create(base)', () => Sandbox.create('base', { timeoutMs: 120_000 }));
  if (!sbx) return;
  try {
    await check('commands.run', async () => {
      const r = await sbx.commands.run('echo hi; echo err >&2');
      expect(r.stdout === 'hi\n' && r.stderr === 'err\n' && r.exitCode === 0, r);
      return r.stdout;
    });
    await check('files write/read/list', async () => {
      await sbx.files.write('/home/user/a.txt', 'A');
      expect(await sbx.files.read('/home/user/a.txt') === 'A', 'read');
      const names = (await sbx.files.list('/home/user')).map((e) => e.name);
      expect(names.includes('a.txt'), names);
      return names.length;
    });
    await check('pause and connect', async () => {
      await sbx.pause();
      const again = await Sandbox.connect(sbx.sandboxId);
      expect(await again.files.read('/home/user/a.txt') === 'A', 'after resume');
      return 'resumed';
    });
  } finally {
    await check('kill', () => sbx.kill());
  }
}

(async () => {
  const mode = process.argv[2];
  if (mode === 'interpreter') await interpreterChecks();
  else await baseChecks();
  for (const r of results) console.log(JSON.stringify(r));
})();
