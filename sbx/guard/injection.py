"""Prompt-injection scoring for text coming back from the network into an
AI agent's sandbox.

Rules look for instructions aimed at a model (override its instructions,
change its role, reveal its prompt, send secrets somewhere), for fake chat
role markup, and for text hidden from a human reader (zero-width and tag
characters, HTML comments, invisible CSS, base64). Each rule has a weight,
read as the probability that a text is an injection given that rule alone;
weights combine as a noisy-OR, so several weak signals add up and one
strong signal decides by itself.

Most text that mentions these phrases is about them: security write-ups,
chat-template docs, READMEs. A match inside quotes or a code fence,
reported ("tells the model to ignore..."), permissive ("you can ignore the
previous steps if..."), or near vocabulary of such discussion counts for
less. Hidden channels are never discounted that way.

Speed: each rule is tried only where one of its anchor words occurs (found
with str.find), never at every position of the text.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class InjectionResult:
    score: float
    signals: tuple[str, ...]


@dataclass(frozen=True)
class _Rule:
    name: str
    weight: float
    anchors: tuple[str, ...]
    pattern: re.Pattern[str]
    # Searched for in [anchor - back, anchor + reach]: the anchor is a word
    # the match contains, at most ``back`` characters from its start.
    back: int
    reach: int
    # Shell one-liners are code by nature: a code span does not make them a quotation.
    damp_in_code: bool
    # Words of which the window must hold one before the pattern is tried:
    # "in" on a short slice is far cheaper than a regex search, and common
    # anchors ("model", "system") mostly lead nowhere.
    needs: tuple[str, ...]


def _rule(name: str, weight: float, anchors: str, pattern: str, back: int = 0, reach: int = 200,
          damp_in_code: bool = True, needs: str = "") -> _Rule:
    """A rule; ``anchors`` and ``needs`` separated by ";"."""
    return _Rule(name, weight, tuple(anchors.split(";")), re.compile(pattern), back, reach,
                 damp_in_code, tuple(needs.split(";")) if needs else ())


_EARLIER = r"(?:previous|prior|above|earlier|preceding|original|initial|former|foregoing)"
_ORDERS = (r"(?:instructions?|prompts?|directions?|directives?|rules|guidelines|commands?|"
           r"context|constraints|programming|orders|messages|text|content|tasks?)")
_AI = (r"(?:ai|a\.i\.|llm|llms|large\s+language\s+models?|language\s+models?|chatbots?|"
       r"gpt|chatgpt|claude|gemini|copilot|ai\s+(?:assistant|agent|model|system)s?)")
_SECRETS = (r"(?:api[\s_-]?keys?|access\s+keys?|tokens?|secrets?|credentials?|passwords?|"
            r"env(?:ironment)?\s+var(?:iable)?s?|\.env\b|ssh\s+keys?|private\s+keys?|id_rsa|"
            r"cookies?|session\s+(?:tokens?|ids?)|aws_\w+|conversation|chat\s+history|"
            r"system\s+prompt|credit\s+card\s+numbers?|(?:the\s+)?user'?s\s+(?:data|files|"
            r"emails?|messages))")
_SENSITIVE_FILES = (r"(?:~/\.(?:ssh|aws|netrc|docker|kube|gnupg|config/gh)|\.netrc\b|id_rsa|"
                    r"id_ed25519|/etc/(?:passwd|shadow)|(?<![\w.])\.env\b(?!\.))")
_MODES = r"(?:developer|dev|god|jailbreak|jailbroken|dan|unrestricted|unfiltered|sudo)"
_TELL = (r"(?:tell(?:ing)?|inform(?:ing)?|mention(?:ing)?|reveal(?:ing)?|alert(?:ing)?|"
         r"notify(?:ing)?|warn(?:ing)?|let(?:ting)?\s+know|disclos(?:e|ing)|report(?:ing)?)")

# Anchors, shared by rules so that each is looked for once per text.
_A_IGNORE = "ignor;disregard;forget"
_A_ORDERS = "instruction;prompt;rules;guideline;directive;polic"
_A_LIMITS = "restrict;filter;censor"
_A_YOU = "you are;you're;from now on"
_A_ROLE = "pretend;roleplay;role-play;act as"
_A_AI = " ai;llm;assistant;agent;model;gpt;claude"
_A_NOT = "not ;n't ;never ;without "
_A_SECRET = "password;token;secret;credential;key"
_A_DEST = "http;@;webhook;!["
_A_SHELL = "curl;wget;| nc"

# Instructions addressed to a model. Signals of one name keep their highest weight.
_INSTRUCTION_RULES: tuple[_Rule, ...] = (
    _rule("ignore-previous", 0.75, _A_IGNORE + ";skip;overrid;bypass",
          rf"(?:ignor(?:e|ing)|disregard|forget|skip|overrid(?:e|ing)|bypass|discard|abandon|drop)"
          rf"\s+(?:(?:all|any|every|each|the|your|of|these|those|everything|system|safety|"
          rf"existing)\s+){{0,4}}?{_EARLIER}\s+(?:[\w-]+\s+){{0,2}}?{_ORDERS}\b"),
    _rule("ignore-previous", 0.7, _A_IGNORE,
          r"(?:ignore|disregard|forget)\s+(?:all\s+|everything\s+|anything\s+)(?:of\s+)?"
          r"(?:the\s+)?(?:(?:that\s+)?(?:was\s+|you\s+were\s+|you've\s+been\s+|you\s+have\s+"
          r"been\s+)(?:said|written|told|given)\s+)?(?:above|before|previously|so\s+far|"
          r"until\s+now|earlier)\b"),
    _rule("ignore-previous", 0.6, _A_IGNORE,
          r"(?:ignore|disregard|forget)\s+(?:the\s+)?(?:above|previous|prior)\s*(?:[.,;:!]|and\b)"),
    _rule("ignore-previous", 0.6, _A_IGNORE,
          r"(?:ignore|disregard|forget)\s+(?:the\s+user'?s?\s+(?:request|question|instructions?|"
          r"message|task)|(?:the|your)\s+(?:task|request|question|prompt|job)\s+(?:you\s+(?:were|"
          r"have\s+been)\s+given|from\s+the\s+user|above)|(?:the|your|all|any)\s+(?:rules|"
          r"instructions|guidelines|directives|constraints)\s+(?:you\s+(?:were|have\s+been|'ve\s+"
          r"been)\s+given|given\s+to\s+you|you\s+(?:follow|received)))"),
    _rule("ignore-previous", 0.6, _A_ORDERS,
          r"your\s+(?:instructions|rules|guidelines|directives)\s+(?:have|has)\s+(?:been\s+)?"
          r"(?:changed|updated|replaced|revoked|overridden|superseded)", back=8, reach=70,
          needs="your "),
    _rule("ignore-previous", 0.6, _A_ORDERS,
          r"(?:previous|prior|original|earlier)\s+(?:system\s+prompt|instructions|rules|"
          r"guidelines)\s+(?:is|are|has\s+been|have\s+been)\s+(?:now\s+)?(?:revoked|void|"
          r"cancell?ed|replaced|overridden|obsolete|superseded|no\s+longer\s+(?:valid|apply|"
          r"in\s+effect))", back=20, reach=90,
          needs="revoked;void;cancel;replaced;overridden;obsolete;superseded;no longer"),
    _rule("disregard-system", 0.6, _A_ORDERS + ";" + _A_LIMITS,
          r"(?:safety|content|ethical)\s+(?:rules|guidelines|filters|policies|policy|restrictions|"
          r"protocols)\s+(?:are|have\s+been|is|has\s+been)\s+(?:now\s+|temporarily\s+)?"
          r"(?:suspended|disabled|lifted|removed|turned\s+off|waived|no\s+longer\s+(?:apply|"
          r"active|in\s+effect))", back=12, reach=90,
          needs="suspended;disabled;lifted;removed;turned off;waived;no longer"),
    _rule("disregard-system", 0.7, _A_IGNORE + ";overrid;bypass;" + _A_ORDERS + ";" + _A_LIMITS,
          r"(?:ignore|disregard|forget|override|bypass|circumvent|disable|turn\s+off|evade)\s+"
          r"(?:(?:all|any|the|your|its|of|these|those|current)\s+){0,3}(?:system\s+(?:prompt|"
          r"message|instructions?)|safety\s+(?:guidelines|rules|filters?|measures|protocols|"
          r"training|polic(?:y|ies))|content\s+(?:polic(?:y|ies)|filters?)|guardrails|ethical\s+"
          r"(?:guidelines|constraints|rules)|restrictions|safeguards|alignment|moderation)\b",
          back=60, reach=40,
          needs="ignor;disregard;forget;overrid;bypass;circumvent;disabl;turn off;evad"),
    _rule("role-override", 0.65, _A_YOU,
          rf"you(?:\s+are|'re)\s+(?:now\s+)?(?:no\s+longer\s+(?:an?\s+)?(?:ai|assistant|"
          rf"chatgpt|claude|bound|restricted|limited|required|constrained)|now\s+(?:an?\s+)?"
          rf"(?:unrestricted|unfiltered|uncensored|jailbroken|evil|free\s+(?:from|of)|freed|"
          rf"dan\b|in\s+{_MODES}\s+mode))"),
    _rule("role-override", 0.35, _A_YOU,
          r"you(?:\s+are|'re)\s+now\s+(?:an?|the|my|acting|going\s+to\s+act|called|named)\b"),
    _rule("role-override", 0.4, _A_YOU,
          r"from\s+now\s+on,?\s+(?:you\s+(?:are|will|must|shall|should|can|have\s+to)|your\s+|"
          r"respond|reply|answer|always|never|only|act|behave|do\s+not|don't)"),
    _rule("role-override", 0.5, "character; mode",
          rf"(?:stay|remain)\s+in\s+(?:character|{_MODES}\s+mode)", back=40, reach=20,
          needs="stay;remain"),
    _rule("act-as", 0.3, _A_ROLE,
          r"(?:^|[.!?:\n>]\s*|please\s+|now,?\s+|you\s+(?:will|must|should|shall|are\s+to)\s+"
          r"(?:now\s+)?)(?:act|pretend|roleplay|role-play|behave)\s+(?:as|like|to\s+be|you\s+are)\b",
          back=40, reach=30, needs="act;pretend;roleplay;role-play;behave"),
    _rule("new-instructions", 0.5, _A_ORDERS,
          r"(?:new|updated|revised|real|actual|true|hidden|secret)\s+(?:system\s+)?(?:instructions?|"
          r"prompt|directives?|task|orders)\s*(?:[:\-]|follow\b|are\b|is\b|received\b|below\b)",
          back=24, reach=40, needs="new ;updated ;revised ;real ;actual ;true ;hidden ;secret "),
    _rule("new-instructions", 0.35, _A_ORDERS + ";overrid",
          r"(?:system|admin|administrator|developer)\s+(?:override|instructions?|prompt|"
          r"directive|command)\s*:", back=16, reach=40, needs="system;admin;developer"),
    _rule("developer-mode", 0.5, " mode",
          rf"(?:{_MODES}\s+mode\s+(?:output|response|reply|answer)|(?:you\s+are\s+(?:now\s+)?in|"
          rf"simulate|simulating|stay\s+in|remain\s+in|act\s+(?:as\s+\w+\s+)?with)\s+(?:the\s+)?"
          rf"{_MODES}\s+mode)", back=60, reach=40,
          needs="developer;dev ;god ;jailbr;dan ;unrestricted;unfiltered;sudo"),
    _rule("developer-mode", 0.15, " mode", rf"{_MODES}\s+mode\b", back=16, reach=10,
          needs="developer;dev ;god ;jailbr;dan ;unrestricted;unfiltered;sudo"),
    _rule("do-anything-now", 0.7, "anything now", r"do\s+anything\s+now", back=3),
    # "DAN" by itself: the persona of that jailbreak, or someone called Dan.
    _rule("do-anything-now", 0.3, " dan",
          r"(?:as|named|called|are|is|be|stay|remain)\s+dan\b|\bdan\s+(?:mode|prompt|jailbreak)\b|"
          r"(?:^|\n)[ \t]*\[?dan\]?\s*:", back=10, reach=20),
    _rule("reveal-prompt", 0.6, _A_ORDERS,
          r"(?:reveal|print|show|output|repeat|display|leak|dump|tell\s+me|give\s+me|write\s+out|"
          r"recite|disclose|expose|share|spell\s+out|what\s+(?:is|are|were))\s+(?:me\s+|us\s+)?"
          r"(?:[\w,'-]+\s+){0,4}?(?:your|its|the\s+(?:hidden|secret|full|original|initial|entire|"
          r"complete|system))\s+(?:[\w-]+\s+){0,2}?(?:system\s+prompt|prompt|instructions|rules|"
          r"guidelines|directives|initial\s+message)\b(?!\s+(?:for|to|on|of)\s+(?:install|"
          r"setting|running|using|build))", back=130, reach=40,
          needs="your;its ;the hidden;the secret;the full;the original;the initial;the entire;"
          "the complete;the system"),
    _rule("reveal-secret", 0.35, _A_SECRET,
          rf"(?:reveal|print|show|output|leak|dump|disclose|share|paste|tell\s+me)\s+(?:me\s+)?"
          rf"(?:the|your|all|any|every)\s+(?:[\w-]+\s+){{0,2}}?{_SECRETS}", back=70, reach=40,
          needs="reveal;print;show;output;leak;dump;disclose;share;paste;tell me"),
    _rule("reveal-prompt", 0.55, "repeat",
          r"repeat\s+(?:all\s+|everything\s+|the\s+)?(?:words|text|everything|prompt|"
          r"instructions|content)\s+(?:above|before|preceding|verbatim|starting)"),
    _rule("prompt-mention", 0.15, _A_ORDERS,
          r"your\s+(?:system\s+prompt|instructions|initial\s+instructions|hidden\s+instructions)",
          back=24, reach=40, needs="your "),
    _rule("ai-addressed", 0.45, _A_AI,
          rf"if\s+you(?:\s+are|'re)\s+(?:an?\s+)?{_AI}(?:\s+(?:reading|processing|parsing|"
          rf"summari[sz]ing|browsing|visiting|that|who|and)|\s*[,.:;])", back=24, reach=80,
          needs="if you"),
    _rule("ai-addressed", 0.45, _A_AI,
          rf"(?:note|message|instructions?|attention|notice|memo|reminder|directive)\s+(?:to|for)"
          rf"\s+(?:the\s+|any\s+|all\s+|every\s+)?(?:{_AI}|assistants?|agents?|models?|bots?)\b",
          back=32, reach=80, needs=" to ; for "),
    _rule("ai-addressed", 0.3, _A_AI, rf"(?:dear|hey|hello|attention|hi)\s+{_AI}\b",
          back=30, reach=80, needs="dear;hey;hello;attention;hi "),
    _rule("ai-addressed", 0.45, _A_AI,
          r"(?:ai|llm|language\s+model)\s+(?:agents?|assistants?|models?|systems?|crawlers?|"
          r"bots?)\s+(?:reading|processing|parsing|summari[sz]ing|browsing|visiting|must|should|"
          r"are\s+(?:required|instructed|expected))", back=16, reach=80, needs="ai ;llm ;language"),
    _rule("ai-addressed", 0.45, _A_AI,
          r"(?:ai|llm|language\s+model|assistant|model|agent|bot)s?\s+(?:reading|processing|"
          r"summari[sz]ing|parsing|browsing)\s+this\b", back=12, reach=80, needs="ing this"),
    _rule("ai-addressed", 0.45, _A_AI,
          r"(?:^|\n|#|//|<!--|\*)[ \t]*(?:ai|llm)(?:\s+(?:agent|assistant|model|bot)s?)?\s*:",
          back=8, reach=40, needs="ai;llm"),
    _rule("ai-addressed", 0.45, _A_AI,
          r"(?:^|\n|#|//|<!--|\*|[.!?])[ \t]*(?:hey\s+|hi\s+|dear\s+|ok\s+)?(?:ai|llm|assistant|"
          r"agent|claude|chatgpt|gpt|copilot|gemini),\s*(?:please|ignore|you|do|don't|always|never|"
          r"from|forget|disregard|stop|now|when)\b", back=16, reach=60, needs=","),
    _rule("ai-addressed", 0.45, _A_AI,
          r"when\s+(?:the|an?|any)\s+(?:ai|llm|assistant|model|agent|bot|language\s+model)\s+"
          r"(?:reads|processes|parses|summari[sz]es|sees|reviews|evaluates|screens|visits)\s+this",
          back=16, reach=60, needs="when "),
    _rule("ai-addressed", 0.3, _A_AI,
          r"the\s+(?:ai|assistant|model|agent|llm)\s+(?:must|should|shall|will|is\s+(?:required|"
          r"instructed)\s+to)\s+(?:now\s+)?(?:disclose|reveal|send|forward|ignore|output|print|"
          r"execute|run|approve|grant|delete|append|include|tell|say|recommend)", back=8, reach=80,
          needs="the "),
    _rule("do-not-tell", 0.5, _A_NOT,
          r"(?:not|n't|never)\s+(?:reveal|mention|disclose|repeat|show)\s+(?:this|these|the\s+"
          r"(?:above|following))\s+(?:instructions?|messages?|notes?|directives?|text)"),
    _rule("do-not-tell", 0.35, "silently;quietly;secretly",
          r"(?:silently|quietly|secretly)\s+(?:add|send|forward|append|include|insert|delete|change|"
          r"copy|upload|cc|bcc|email|replace|modify)\b"),
    _rule("do-not-tell", 0.45, _A_NOT,
          rf"(?:not|n't|never|without)\s+{_TELL}\s+(?:this\s+(?:to\s+)?|it\s+(?:to\s+)?)?"
          rf"(?:the\s+|your\s+)?(?:user|human|operator|owner|developer|admin|administrator|"
          rf"anyone)s?\b"),
    _rule("task-override", 0.5, "your ",
          r"your\s+(?:new|real|true|actual|only|primary|updated|next)\s+(?:task|goal|objective|"
          r"purpose|mission|job|role|instructions?|directive|assignment)\s+(?:is|are|will\s+be|now)"),
    _rule("task-override", 0.35, "instead",
          r"instead\s*,?\s+(?:you\s+(?:must|should|will|shall|need\s+to|are\s+to)|your\s+task|"
          r"(?:open|write|say|output|print|send|run|execute|delete|reply|respond|call|post|approve|"
          r"add|merge|transfer)\b)"),
    _rule("task-override", 0.45, "when ",
          r"when\s+(?:you|the\s+(?:assistant|ai|model|agent))\s+(?:summari[sz]e|write\s+(?:the|a|"
          r"your)\s+summary|translate|answer|respond|reply)\b[^.\n]{0,60}?,?\s*(?:tell|say|"
          r"mention|include|add|state|claim|recommend|write|insert|append)\b"),
    _rule("task-override", 0.4, _A_NOT,
          r"(?:not|n't)\s+(?:summari[sz]e|translate|analy[sz]e)\s+(?:this|the)\s+"
          r"(?:page|document|text|article|content|email|website)"),
    _rule("task-override", 0.45, _A_NOT,
          r"(?:not|n't)\s+(?:answer|respond\s+to|help\s+with)\s+(?:the\s+user'?s?|their|his|her)\s+"
          r"(?:question|request|query|message)"),
    _rule("task-override", 0.4, "every ",
          r"(?:respond|reply|answer)\s+(?:to\s+)?(?:every|each|all|any)\s+(?:prompts?|questions?|"
          r"messages?|requests?|quer(?:y|ies))\s+(?:with|by|only)\b", back=24),
    _rule("task-override", 0.45, "every ",
          r"(?:append|add|include|insert|prepend)\s+[^\n]{0,80}?\s+(?:to|in|into|at\s+the\s+"
          r"(?:end|start)\s+of)\s+(?:every|each|all|any)\s+(?:of\s+your\s+)?(?:reply|replies|"
          r"answers?|responses?|messages?|outputs?|summar(?:y|ies)|emails?\s+you)", back=130),
    _rule("task-override", 0.5, "only ",
          r"(?:follow|obey)\s+only\s+(?:the\s+)?(?:instructions|directions|commands|rules)\s+(?:in|"
          r"from|of)\s+this\s+(?:document|page|email|message|text|file|site)", back=8),
    _rule("credential-phishing", 0.45, "ask ",
          r"ask\s+(?:the\s+user|them|him|her|the\s+customer)\s+(?:for|to\s+(?:provide|enter|share|"
          r"send|confirm))\s+(?:their|his|her|the|your)\s+(?:password|credentials|login|2fa|otp|"
          r"one-time|verification\s+code|api\s+key|credit\s+card|card\s+number|ssn|social)"),
    _rule("remote-code", 0.35, "http",
          r"(?:open|download|fetch|get|curl|wget)\s+https?://\S+\s+(?:and|then|,)\s+(?:then\s+)?"
          r"(?:execute|run|eval|source|install)\b", back=12, damp_in_code=False),
    _rule("unrestricted", 0.3, "without ;no ;free ",
          r"(?:without|no|free\s+(?:of|from))\s+(?:any\s+)?(?:restrictions|limitations|filters|"
          r"filtering|censorship|ethical\s+(?:guidelines|constraints|considerations)|moral\s+"
          r"(?:guidelines|constraints)|content\s+polic(?:y|ies)|safety\s+(?:guidelines|filters))",
          reach=60),
    _rule("unrestricted", 0.35, "comply",
          r"comply\s+with\s+(?:all|every|any)\s+(?:requests?|commands?|instructions?|demands?)"),
    _rule("unrestricted", 0.35, _A_LIMITS,
          r"(?:unfiltered|uncensored|unrestricted)\s+(?:ai|mode|version|assistant|model|"
          r"responses?|outputs?|answers?)\b", back=4),
    _rule("authority", 0.4, " from ",
          r"(?:message|instructions?|directive|order|update|notice)\s+from\s+(?:the\s+)?(?:system|"
          r"developers?|admin(?:istrator)?s?|openai|anthropic|your\s+(?:creators?|developers?|"
          r"owners?|operators?|administrators?)|(?:ai\s+)?(?:safety|security)\s+team)\b",
          back=16, reach=80),
    _rule("exfiltration", 0.65, _A_DEST,
          rf"{_SECRETS}\b[^\n]{{0,80}}?\b(?:send|post|upload|forward|transmit|exfiltrate|email|"
          rf"submit)\s+(?:them|it|this|those|these|everything|all\s+of\s+(?:them|it))\s+(?:to|"
          rf"into)\s+(?:https?://|[\w.+-]+@[\w-]+\.[a-z]|(?:this|the\s+following|our|my)\s+"
          rf"(?:url|endpoint|server|webhook|address))", back=200, reach=60),
    _rule("exfiltration", 0.65, _A_DEST,
          rf"(?:send|post|upload|forward|transmit|exfiltrate|email|e-mail|submit|leak|paste|append|"
          rf"include|attach)\s+(?:\S+\s+){{0,8}}?\S{{0,20}}?{_SECRETS}\b[^\n]{{0,120}}?\b(?:to|"
          rf"into|at|via|in)\s+(?:https?://|(?:this|the\s+following|our|my|an?\s+external|the)\s+"
          rf"(?:url|endpoint|server|webhook|address|email|link|site)|[\w.+-]+@[\w-]+\.[a-z]|"
          rf"webhook|!\[|a\s+(?:link|url|markdown\s+image))", back=300, reach=60),
    _rule("exfiltration", 0.55, _A_DEST,
          rf"(?:https?://\S+[^\n]{{0,150}}?{_SENSITIVE_FILES}|{_SENSITIVE_FILES}[^\n]{{0,150}}?"
          rf"(?:https?://|[\w.+-]+@[\w-]+\.[a-z]))", back=180, reach=240,
          needs="~/.;.netrc;id_rsa;id_ed25519;/etc/;.env"),
    _rule("shell-exfiltration", 0.55, _A_SHELL,
          r"(?:curl|wget|ncat|nc)\b[^\n]{0,200}?(?:\$\((?:env|printenv|cat|whoami)\b|`(?:env|"
          r"printenv|cat)\b|~/\.(?:ssh|aws|netrc|docker|kube|config/gh)|/etc/(?:passwd|shadow)|"
          r"id_rsa|@\.env\b|\$\(cat\s)", damp_in_code=False),
    _rule("shell-exfiltration", 0.55, _A_SHELL,
          r"(?:cat|printenv|env|set)\b[^\n|]{0,80}\|\s*(?:curl|wget|nc|ncat|netcat)\b",
          back=90, reach=20, damp_in_code=False),
    _rule("markdown-exfiltration", 0.5, "![",
          r"!\[[^\]\n]{0,100}\]\(https?://[^)\s]{1,300}[?&][\w-]+=(?:\{|\$|<|\[|%7b)", reach=420),
    _rule("role-tag", 0.6, "<|",
          r"<\|(?:im_start|im_end|system|start_header_id|end_header_id|eot_id|endoftext|"
          r"assistant|user)\|>", reach=24),
    _rule("role-tag", 0.5, "inst];sys>>", r"\[/?inst\]|<</?sys>>", back=4, reach=8),
    _rule("role-tag", 0.45, "system;instruction",
          r"#{1,6}[ \t]*(?:system|instructions?|developer|admin)[ \t]*(?:prompt|message|"
          r"override)?[ \t]*:?[ \t]*(?:\n|$)", back=10, reach=40),
    _rule("role-tag", 0.35, "system;instruction",
          r"</?(?:system|admin|developer|instructions)>", back=2, reach=20),
    _rule("role-tag", 0.3, "system",
          r"[\[(]\s*(?:system|admin|developer)\s*(?:message|note|override|instructions?)?\s*[\])]",
          back=3, reach=40),
    _rule("role-tag", 0.35, "system",
          r"(?:^|\n)[ \t]*(?:system|admin|security)\s+(?:notice|alert|message|update|override|"
          r"instructions?)\s*:", back=8, reach=40),
    _rule("role-tag", 0.45, "system", r"system\s+(?:prompt|message|override)\s*:", reach=40),
    _rule("context-break", 0.3, "end of",
          r"end\s+of\s+(?:user\s+input|untrusted\s+(?:content|input|data)|(?:the\s+)?(?:document|"
          r"prompt|context|conversation|system\s+prompt|instructions))\s*[-=#*\]>]{2,}", reach=60),
    _rule("context-break", 0.25, "</",
          r"</(?:document|context|user_input|untrusted|data|search_results?|tool_output|"
          r"function_results?)>", reach=40),
)


# -- damping: text about injection rather than text doing it --------------------------------
_QUOTES = "\"'`\u201c\u2018\u00ab"
_REPORTED = re.compile(
    r"(?:(?:the|a|an|its|their)\s+(?:model|llm|ai|assistant|agent|chatbot|bot|system)s?|\bit|"
    r"\bthem|\bmodels|\bllms|\bagents)\s+to\s+$|(?:such\s+as|like|e\.g\.,?|i\.e\.,?|says?|said|"
    r"saying|phrases?|strings?|text|words?|containing|contains|reads?|lines?\s+like|"
    r"instructions?\s+like)\s*[:,]?\s*[\"'`\u201c\u2018]?$"
)
# "If you use Windows, ignore the previous instructions": a condition on the reader.
_CONDITIONAL_BEFORE = re.compile(
    r"(?:^|[.!?\n]\s*)(?:if|when|unless|once)\s+you\b([^.!?\n]{0,60}),\s*$"
)
_AI_WORDS = re.compile(rf"\b{_AI}\b|assistant|agent|model")
# "disregard the previous instructions I sent": the writer retracting their own.
_OWN_WORDS_AFTER = re.compile(
    r"\s+(?:i|we)\s+(?:sent|gave|wrote|posted|shared|mentioned|provided)\b"
)
# "A classic attack tells the model to ignore ... and reveal ...": the whole
# sentence reports what an attack does.
_REPORTING_CLAUSE = re.compile(
    r"\b(?:tells?|told|asks?|asked|instructs?|instructed|tricks?|tricked|convinces?|convinced|"
    r"makes?|made|gets?|got|causes?|caused|forces?|forced|persuades?|persuaded)\s+(?:the\s+|a\s+|"
    r"an\s+|its\s+|their\s+)?(?:model|llm|ai|assistant|agent|chatbot|bot|system)s?\s+(?:to|into)\b"
)
_PERMISSIVE = re.compile(r"(?:can|may|could|might|safely|free\s+to)\s+(?:safely\s+|just\s+|"
                         r"simply\s+|also\s+)?$")
_CONDITIONAL_AFTER = re.compile(r"\s*(?:if|when|unless|once)\s+(?:you|your)\b")
_META = re.compile(
    r"prompt[\s-]injection|jailbreak|attack|malicious|adversar|red[\s-]team|mitigat|vulnerab|"
    r"exploit|researcher|owasp|payload|for\s+example|e\.g\.|such\s+as|chat\s+template|tokeni[sz]er|"
    r"special\s+tokens|fine-tun|defen[cs]e|classifier|benchmark|dataset"
)
_META_WINDOW = 300


def _fences(low: str) -> list[int]:
    """Offsets of ``` marks: a position after an odd number of them is inside a code block."""
    out, i = [], low.find("```")
    while i != -1:
        out.append(i)
        i = low.find("```", i + 3)
    return out


def _quoted(low: str, start: int, except_: str = "") -> bool:
    before = low[max(0, start - 3) : start].rstrip()
    return bool(before) and before[-1] in _QUOTES and before[-1] not in except_


def _line_start(low: str, start: int) -> int:
    """Where the line holding ``start`` begins, looking back 400 characters
    at most: minified bodies are one line."""
    return max(low.rfind("\n", max(0, start - 400), start) + 1, start - 400, 0)


def _in_quotation(low: str, start: int) -> bool:
    """Inside a double-quoted span on its line that is a quotation, not a
    JSON string value."""
    seg = low[_line_start(low, start) : start]
    open_at = seg.rfind("\u201c") if seg.count("\u201c") > seg.count("\u201d") else -1
    if open_at == -1 and seg.count('"') % 2:
        open_at = seg.rfind('"')
    if open_at == -1:
        return False
    before = seg[:open_at].rstrip()
    return not before.endswith(('":', "{", "[", ","))


def _conditional(low: str, start: int, end: int) -> bool:
    before = _CONDITIONAL_BEFORE.search(low, max(0, start - 80), start)
    if before is not None:
        return _AI_WORDS.search(before.group(1)) is None
    return _CONDITIONAL_AFTER.match(low, end) is not None


def _in_code(low: str, start: int, fences: list[int]) -> bool:
    """Inside a ``` block, or inside `inline code` on its line."""
    return (bisect_right(fences, start) % 2 == 1
            or low.count("`", _line_start(low, start), start) % 2 == 1)


def _quoted_or_code(low: str, start: int, fences: list[int], in_code: bool) -> bool:
    if in_code and (_in_code(low, start, fences) or low[start - 1 : start] == "`"):
        return True
    return _quoted(low, start, "" if in_code else "`") or _in_quotation(low, start)


def _reported(low: str, start: int) -> bool:
    lo = max(0, start - 200)
    sentence = max(low.rfind(".", lo, start), low.rfind("\n", lo, start), lo - 1) + 1
    return (_REPORTED.search(low, max(0, start - 40), start) is not None
            or _REPORTING_CLAUSE.search(low, sentence, start) is not None)


def _permitted(low: str, start: int, end: int) -> bool:
    return (_PERMISSIVE.search(low, max(0, start - 40), start) is not None
            or _conditional(low, start, end) or _OWN_WORDS_AFTER.match(low, end) is not None)


def _discussed(low: str, start: int, end: int) -> bool:
    lo, hi = max(0, start - _META_WINDOW), end + _META_WINDOW
    return len({m.group() for m in _META.finditer(low, lo, hi)}) >= 2


def _damping(low: str, start: int, end: int, fences: list[int], in_code: bool = True) -> float:
    """How much a match counts, from 1.0 down, by what surrounds it."""
    factor = 1.0
    if _quoted_or_code(low, start, fences, in_code):
        factor *= 0.5
    if _reported(low, start):
        factor *= 0.5
    if _permitted(low, start, end):
        factor *= 0.4
    if _discussed(low, start, end):
        factor *= 0.6
    return factor


# -- text preparation -------------------------------------------------------------------------
_INVISIBLE = "\u200b-\u200f\u2060-\u2064\ufeff\u00ad\u180e"
_ZERO_WIDTH = re.compile(f"[{_INVISIBLE}]")
_ZERO_WIDTH_IN_WORD = re.compile(f"[A-Za-z][{_INVISIBLE}]+[A-Za-z]")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
_TAG_CHARS = re.compile("[\U000e0020-\U000e007e]+")
# Cyrillic and Greek letters that look like Latin ones, as used to dodge word filters.
_CONFUSABLES = str.maketrans(
    "\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0456\u0458\u0455\u04bb\u0501\u03bf\u03b1\u03b5"
    "\u03b9\u03ba\u03bd\u03c1\u03c4\u03c5\u03c7",
    "aeopcyxijshdoaeiknptux",
)
_MIXED_SCRIPT = re.compile("[A-Za-z][\u0370-\u052f]|[\u0370-\u052f][A-Za-z]")
_TO_ASCII_QUOTES = str.maketrans("\u201c\u201d\u2018\u2019\u00ab\u00bb", "\"\"''\"\"")


@dataclass(frozen=True)
class _Text:
    # Lower case as a model reads it, ASCII ("?" for anything else).
    low: str
    # Original case, ASCII: where base64 is looked for.
    folded: str
    # Zero-width characters between letters, bidi controls, tag-character text.
    zero_width_in_words: int = 0
    bidi: bool = False
    tag_texts: tuple[str, ...] = ()


def _ascii(text: str) -> str:
    """One ASCII character per character, "?" for anything else: every
    rule is ASCII, and a one-byte string is the fastest to search."""
    if "\u201c" in text or "\u2018" in text or "\u00ab" in text:
        text = text.translate(_TO_ASCII_QUOTES)
    return text.encode("ascii", "replace").decode("ascii")


def _latin_lookalikes(line: str) -> str:
    """``line`` with the look-alike letters of words that mix scripts
    ("ign\u043ere") mapped to Latin; words wholly in Cyrillic or Greek stay."""
    out: list[str] = []
    pos = 0
    for m in _MIXED_SCRIPT.finditer(line):
        start, end = m.start(), m.end()
        if start < pos:
            continue
        while start > pos and line[start - 1].isalnum():
            start -= 1
        while end < len(line) and line[end].isalnum():
            end += 1
        out += (line[pos:start], line[start:end].translate(_CONFUSABLES))
        pos = end
    out.append(line[pos:])
    return "".join(out)


def _visible_line(line: str) -> str:
    """Compatibility forms folded (full-width letters), invisible characters
    dropped, look-alike letters inside Latin words mapped to Latin."""
    if not unicodedata.is_normalized("NFKC", line):
        line = unicodedata.normalize("NFKC", line)
    if _ZERO_WIDTH.search(line):
        line = _ZERO_WIDTH.sub("", line)
    line = _latin_lookalikes(line)
    return _ascii(line.lower())


_PIECE = 4096


def _pieces(text: str) -> Iterator[str]:
    """``text`` in lines, long lines cut after a space: most pieces of most
    bodies are ASCII and take the fast path, even in minified bodies.
    Joined with "", the pieces are ``text``."""
    for line in text.splitlines(keepends=True):
        pos = 0
        while len(line) - pos > _PIECE:
            cut = line.find(" ", pos + _PIECE) + 1 or len(line)
            yield line[pos:cut]
            pos = cut
        if pos < len(line):
            yield line[pos:]


def _prepare(text: str) -> _Text:
    """The text as a model would read it, piece by piece."""
    if text.isascii():
        return _Text(text.lower(), text)
    low: list[str] = []
    folded: list[str] = []
    tags: list[str] = []
    zero_width, bidi = 0, False
    for piece in _pieces(text):
        if piece.isascii():
            low.append(piece.lower())
            folded.append(piece)
            continue
        low.append(_visible_line(piece))
        folded.append(_ascii(piece))
        if _ZERO_WIDTH.search(piece):
            zero_width += len(_ZERO_WIDTH_IN_WORD.findall(piece))
        bidi = bidi or _BIDI.search(piece) is not None
        tags += ("".join(chr(ord(c) - 0xE0000) for c in m.group()).lower()
                 for m in _TAG_CHARS.finditer(piece))
    return _Text("".join(low), "".join(folded), zero_width, bidi, tuple(tags))


# -- hidden channels --------------------------------------------------------------------------
_HTML_COMMENT = re.compile(r"<!--([\s\S]{0,20000}?)-->")
# What hides an element; each opens with a literal, found as fast as str.find.
_HIDING = tuple(re.compile(p) for p in (
    r"display\s*:\s*none", r"visibility\s*:\s*hidden", r"font-size\s*:\s*0(?![.\d]*[1-9])",
    r"opacity\s*:\s*0(?![.\d]*[1-9])", r"color\s*:\s*(?:#fff(?:fff)?|white|transparent)\b",
    r"hidden(?=[\s>/=])", r"aria-hidden\s*=\s*[\"']true",
))
_TAG_NAME = re.compile(r"<([a-z][a-z0-9]*)\b")
_MAX_HIDDEN = 20000
# Text shown only when an image fails to load, or on hover.
_HIDDEN_ATTRIBUTES = (" alt", " title", " aria-label", " data-")
_ATTRIBUTE_VALUE = re.compile(r'[\w-]*\s*=\s*"([^"<>]{12,2000})"')
# Base64 runs are found in a copy where every base64 character is "b" and
# every other one ".": the search then skips from "." to "." instead of
# trying the character class at every position.
_BASE64_SHAPE = bytes(
    ord("b") if chr(c).isascii() and (chr(c).isalnum() or chr(c) in "+/") else ord(".")
    for c in range(256)
)
_BASE64_RUN = re.compile(rb"(?:^|\.)(b{24,})")
_MAX_BLOBS = 200
_HIDDEN_WEIGHTS = {
    "hidden-html": 0.5,
    "hidden-css": 0.5,
    "base64-instructions": 0.6,
    "unicode-tags": 0.6,
}
# An instruction rule this strong inside a hidden channel makes it suspect.
_HIDDEN_MIN = 0.25


def _decode_base64(blob: str) -> str | None:
    try:
        raw = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
        decoded = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    printable = sum(1 for c in decoded if c.isprintable() or c.isspace())
    return decoded if printable >= 0.9 * len(decoded) and " " in decoded else None


def _base64_blobs(folded: str) -> Iterator[str]:
    shape = folded.encode("ascii").translate(_BASE64_SHAPE)
    for n, m in enumerate(_BASE64_RUN.finditer(shape)):
        if n >= _MAX_BLOBS:
            break
        yield folded[m.start(1) : m.end(1)]


def _hidden_attributes(low: str) -> Iterator[str]:
    for name in _HIDDEN_ATTRIBUTES:
        for i in _find_all(low, name):
            m = _ATTRIBUTE_VALUE.match(low, i + len(name))
            if m is not None:
                yield m.group(1)


def _hidden_blocks(low: str) -> Iterator[str]:
    """The content of elements whose own tag hides them."""
    opened: set[int] = set()
    for pattern in _HIDING:
        for m in pattern.finditer(low):
            start = low.rfind("<", max(0, m.start() - 400), m.start())
            if start == -1 or start in opened or low.find(">", start, m.start()) != -1:
                continue  # not inside a start tag, or that tag was seen
            opened.add(start)
            tag, tag_end = _TAG_NAME.match(low, start), low.find(">", m.end())
            if tag is None or tag_end == -1:
                continue
            close = low.find(f"</{tag.group(1)}>", tag_end, tag_end + _MAX_HIDDEN)
            if close != -1:
                yield low[tag_end + 1 : close]


def _hidden_segments(text: _Text) -> Iterator[tuple[str, str]]:
    """(channel, lower-cased content) for text a human reader would not see."""
    low = text.low
    if "<!--" in low:
        for m in _HTML_COMMENT.finditer(low):
            yield "hidden-html", m.group(1)
    if "<" in low:
        yield from (("hidden-html", value) for value in _hidden_attributes(low))
        yield from (("hidden-css", content) for content in _hidden_blocks(low))
    for blob in _base64_blobs(text.folded):
        decoded = _decode_base64(blob)
        if decoded is not None:
            yield "base64-instructions", _prepare(decoded).low
    yield from (("unicode-tags", tagged) for tagged in text.tag_texts)


# -- scoring ----------------------------------------------------------------------------------
class _Anchors:
    """Where each anchor occurs in one text, found once for all rules."""

    def __init__(self, low: str) -> None:
        self.low = low
        self._hits: dict[str, list[int]] = {}

    def hits(self, anchors: Iterable[str]) -> list[int]:
        out: list[int] = []
        for anchor in anchors:
            if anchor not in self._hits:
                self._hits[anchor] = list(_find_all(self.low, anchor))
            out += self._hits[anchor]
        return sorted(out)


def _find_all(text: str, literal: str) -> Iterator[int]:
    i = text.find(literal)
    while i != -1:
        yield i
        i = text.find(literal, i + 1)


def _holds_any(window: str, words: tuple[str, ...]) -> bool:
    return any(word in window for word in words)


def _matches(rule: _Rule, anchors: _Anchors) -> Iterator[re.Match[str]]:
    low, seen = anchors.low, set()
    for i in anchors.hits(rule.anchors):
        if rule.back == 0:
            m = rule.pattern.match(low, i, i + rule.reach)
        else:
            lo, hi = max(0, i - rule.back), i + rule.reach
            if rule.needs and not _holds_any(low[lo:hi], rule.needs):
                continue
            m = rule.pattern.search(low, lo, hi)
        if m is not None and m.start() not in seen:
            seen.add(m.start())
            yield m


def _rule_weight(rule: _Rule, anchors: _Anchors, fences: list[int] | None) -> float:
    """The rule's weight at its least damped match; 0 if it has none.
    ``fences`` None: hidden content, not damped."""
    best = 0.0
    for m in _matches(rule, anchors):
        damping = (1.0 if fences is None
                   else _damping(anchors.low, m.start(), m.end(), fences, rule.damp_in_code))
        best = max(best, rule.weight * damping)
        if best >= rule.weight:
            break
    return best


def _instruction_signals(low: str, damp: bool = True) -> dict[str, float]:
    anchors, fences = _Anchors(low), (_fences(low) if damp else None)
    found: dict[str, float] = {}
    for rule in _INSTRUCTION_RULES:
        weight = _rule_weight(rule, anchors, fences)
        if weight > found.get(rule.name, 0.0):
            found[rule.name] = weight
    return found


def _invisible_char_signals(text: _Text) -> dict[str, float]:
    found = {}
    if text.zero_width_in_words >= 3:
        found["zero-width"] = 0.5 if text.zero_width_in_words >= 10 else 0.3
    if text.bidi:
        found["bidi-override"] = 0.2
    return found


def _smuggled_words(channel: str, content: str) -> bool:
    """Tag characters spelling words: they have no use in text but to hide
    it (emoji flags use a few, without spaces)."""
    return channel == "unicode-tags" and len(content) >= 8 and " " in content.strip()


# Joins a channel's segments: no pattern crosses it, so each is judged alone.
_SEGMENT_BREAK = "\n\n\x00\n\n"


def _hidden_signals(text: _Text) -> dict[str, float]:
    """Signals from text a reader would not see. A channel's segments are
    judged together (one pass of the rules, not one per HTML comment)."""
    by_channel: dict[str, list[str]] = {}
    for channel, content in _hidden_segments(text):
        by_channel.setdefault(channel, []).append(content)
    found: dict[str, float] = {}
    for channel, contents in by_channel.items():
        inner = _instruction_signals(_SEGMENT_BREAK.join(contents), damp=False)
        smuggled = any(_smuggled_words(channel, content) for content in contents)
        if max(inner.values(), default=0.0) < _HIDDEN_MIN and not smuggled:
            continue
        found[channel] = _HIDDEN_WEIGHTS[channel]
        for name, weight in inner.items():
            found[name] = max(found.get(name, 0.0), weight)
    return found


def _noisy_or(weights: Iterable[float]) -> float:
    miss = 1.0
    for w in weights:
        miss *= 1.0 - w
    return 1.0 - miss


def score_injection(text: str) -> InjectionResult:
    """How likely ``text`` is to carry instructions aimed at an AI agent:
    a score in [0, 1] and the names of the rules that fired, strongest first."""
    prepared = _prepare(text)
    signals = _instruction_signals(prepared.low)
    for extra in (_invisible_char_signals(prepared), _hidden_signals(prepared)):
        for name, weight in extra.items():
            signals[name] = max(signals.get(name, 0.0), weight)
    fired = {name: w for name, w in signals.items() if w > 0}
    names = tuple(sorted(fired, key=lambda n: (-fired[n], n)))
    return InjectionResult(round(_noisy_or(fired.values()), 4), names)
