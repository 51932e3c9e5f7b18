/**
 * The part of U-Boot's hush shell that boot scripts use, for the simulator's U-Boot: it runs the
 * very boot.scr the builder wrote (src/boot/uboot-script.ts), so the simulated boot counter is the
 * script's own decision, not a second description of it that could drift.
 *
 * Covered, with U-Boot's semantics: `;` and newlines, `&&`, `||`, `if/then/elif/else/fi`,
 * `for NAME in WORDS; do ...; done` (NAME is a shell-local variable, as in U-Boot), double and
 * single quotes, `${var}`/`$var` expansion (shell locals first, then the environment; unquoted
 * values split on blanks), `#` comments; built-ins `setenv`, `test` (-n -z = != -eq -ne -lt -le
 * -gt -ge !), `setexpr` (hex arithmetic printed as %lx, `.s` string reads), `echo`, `run`,
 * `true`, `false`. Commands touching the board (load, fatwrite, booti, ...) come from the caller.
 * Anything else throws: a script the simulator does not understand must fail a test, not be
 * guessed at.
 */

export interface ShellMemory {
  write(addr: number, data: Buffer): void;
  read(addr: number, length: number): Buffer;
  /** Bytes from `addr` up to the first NUL. */
  readString(addr: number): string;
}

/** RAM for the simulator's U-Boot: the regions written this boot, later writes on top. */
export class SimMemory implements ShellMemory {
  private readonly writes: { addr: number; data: Buffer }[] = [];

  write(addr: number, data: Buffer): void {
    this.writes.push({ addr, data: Buffer.from(data) });
  }

  read(addr: number, length: number): Buffer {
    const out = Buffer.alloc(length);
    for (const w of this.writes) {
      const from = Math.max(addr, w.addr);
      const to = Math.min(addr + length, w.addr + w.data.length);
      if (from < to) w.data.copy(out, from - addr, from - w.addr, to - w.addr);
    }
    return out;
  }

  /** Whether a write of exactly this start and length is the latest thing at `addr` (a file loaded there). */
  loadedAt(addr: number): Buffer | undefined {
    for (let i = this.writes.length - 1; i >= 0; i--) {
      const w = this.writes[i];
      if (w.addr === addr) return w.data;
      if (addr >= w.addr && addr < w.addr + w.data.length) return undefined;
    }
    return undefined;
  }

  readString(addr: number): string {
    const bytes: number[] = [];
    for (let a = addr; ; a += 256) {
      const chunk = this.read(a, 256);
      const nul = chunk.indexOf(0);
      if (nul >= 0) return Buffer.concat([Buffer.from(bytes), chunk.subarray(0, nul)]).toString('utf8');
      bytes.push(...chunk);
      if (bytes.length > 1 << 20) throw new Error(`setexpr.s: no NUL within 1 MiB of 0x${addr.toString(16)}`);
    }
  }
}

/** Thrown by a command that leaves the shell for good: `reset`, or a kernel that starts. */
export class ShellExit extends Error {
  constructor(
    readonly how: 'reset' | 'boot',
    readonly detail: Record<string, unknown> = {},
  ) {
    super(`U-Boot ${how}`);
    this.name = 'ShellExit';
  }
}

export type ShellCommand = (args: string[], sh: UbootShell) => Promise<number> | number;

type Part = { text: string; quote: 'none' | 'double' | 'single' };
type Token = { t: 'word'; parts: Part[] } | { t: 'op'; v: ';' | '\n' | '&&' | '||' };

type Node =
  | { k: 'simple'; words: Part[][] }
  | { k: 'if'; branches: { cond: Node[]; body: Node[] }[]; otherwise?: Node[] }
  | { k: 'for'; name: string; words: Part[][]; body: Node[] }
  | { k: 'andor'; first: Node; rest: { op: '&&' | '||'; node: Node }[] };

export class UbootShell {
  readonly env: Record<string, string>;
  readonly locals: Record<string, string> = {};
  readonly console: string[] = [];
  private depth = 0;

  constructor(
    env: Record<string, string>,
    readonly memory: ShellMemory,
    private readonly commands: Record<string, ShellCommand>,
  ) {
    this.env = { ...env };
  }

  /** Runs a script; returns the status of its last command. */
  async run(text: string): Promise<number> {
    if (++this.depth > 16) throw new Error('U-Boot shell: scripts nested more than 16 deep');
    try {
      return await this.runList(new Parser(lex(text)).program());
    } finally {
      this.depth--;
    }
  }

  private async runList(nodes: Node[]): Promise<number> {
    let status = 0;
    for (const n of nodes) status = await this.exec(n);
    return status;
  }

  private async exec(n: Node): Promise<number> {
    switch (n.k) {
      case 'andor': {
        let status = await this.exec(n.first);
        for (const r of n.rest) if ((r.op === '&&') === (status === 0)) status = await this.exec(r.node);
        return status;
      }
      case 'if': {
        for (const b of n.branches) if ((await this.runList(b.cond)) === 0) return this.runList(b.body);
        return n.otherwise ? this.runList(n.otherwise) : 0;
      }
      case 'for': {
        let status = 0;
        for (const value of n.words.flatMap((w) => this.expand(w))) {
          this.locals[n.name] = value;
          status = await this.runList(n.body);
        }
        return status;
      }
      case 'simple': {
        const argv = n.words.flatMap((w) => this.expand(w));
        if (argv.length === 0) return 0;
        return this.command(argv);
      }
    }
  }

  private async command(argv: string[]): Promise<number> {
    const [name, ...args] = argv;
    const builtin = BUILTINS[name];
    if (builtin) return builtin(args, this);
    if (this.commands[name]) return this.commands[name](args, this);
    // A command with a size suffix (mw.b) goes to its base command, which gets the full name first.
    const base = this.commands[name.split('.')[0]];
    if (!base) throw new Error(`U-Boot shell (simulated): command "${name}" is not simulated`);
    return base([name, ...args], this);
  }

  /** A variable as the shell expands it: shell locals first, then the environment. */
  get(name: string): string | undefined {
    return this.locals[name] ?? this.env[name];
  }

  log(line: string): void {
    this.console.push(line);
  }

  /** Expands one word into fields: unquoted expansions split on blanks; quotes keep an empty field. */
  private expand(word: Part[]): string[] {
    const fields: string[] = [];
    let cur = '';
    let has = false;
    for (const p of word) {
      if (p.quote === 'single') {
        cur += p.text;
        has = true;
        continue;
      }
      const value = p.text.replace(/\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (_m, a: string | undefined, b: string | undefined) => this.get(a ?? b!) ?? '');
      if (p.quote === 'double') {
        cur += value;
        has = true;
        continue;
      }
      // Unquoted: literal text has no blanks (the lexer split there); expanded values may.
      const pieces = value.split(/[ \t\n]+/);
      pieces.forEach((piece, i) => {
        if (i > 0) {
          if (has) fields.push(cur);
          cur = '';
          has = false;
        }
        if (piece) {
          cur += piece;
          has = true;
        }
      });
    }
    if (has) fields.push(cur);
    return fields;
  }
}

/** hextoul: U-Boot reads setexpr operands and addresses as hex, with or without 0x. */
export function hexArg(text: string, what: string): number {
  const t = text.trim().replace(/^0[xX]/, '');
  if (!/^[0-9a-fA-F]+$/.test(t)) throw new Error(`U-Boot shell (simulated): ${what} "${text}" is not a hex number`);
  return parseInt(t, 16);
}

/** simple_strtol(text, NULL, 0), as `test` compares numbers. */
function strtol(text: string): number {
  const m = /^\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)?/.exec(text)!;
  if (!m[2]) return 0;
  const d = m[2];
  const n = /^0[xX]/.test(d) ? parseInt(d.slice(2), 16) : d.length > 1 && d[0] === '0' ? parseInt(d, 8) : parseInt(d, 10);
  return m[1] === '-' ? -n : n;
}

function testExpr(args: string[]): boolean {
  if (args[0] === '!') return !testExpr(args.slice(1));
  if (args.length === 0) return false;
  if (args.length === 1) return args[0] !== '';
  if (args.length === 2) {
    if (args[0] === '-n') return args[1] !== '';
    if (args[0] === '-z') return args[1] === '';
    throw new Error(`U-Boot shell (simulated): test ${args.join(' ')}: unsupported`);
  }
  if (args.length === 3) {
    const [a, op, b] = args;
    const ints: Record<string, (x: number, y: number) => boolean> = {
      '-eq': (x, y) => x === y,
      '-ne': (x, y) => x !== y,
      '-lt': (x, y) => x < y,
      '-le': (x, y) => x <= y,
      '-gt': (x, y) => x > y,
      '-ge': (x, y) => x >= y,
    };
    if (op === '=' || op === '==') return a === b;
    if (op === '!=') return a !== b;
    if (ints[op]) return ints[op](strtol(a), strtol(b));
  }
  throw new Error(`U-Boot shell (simulated): test ${args.join(' ')}: unsupported`);
}

const BUILTINS: Record<string, ShellCommand> = {
  setenv(args, sh) {
    if (args.length === 0) throw new Error('U-Boot shell (simulated): setenv without a name');
    const [name, ...value] = args;
    if (value.length === 0) delete sh.env[name];
    else sh.env[name] = value.join(' ');
    return 0;
  },
  test: (args) => (testExpr(args) ? 0 : 1),
  true: () => 0,
  false: () => 1,
  echo(args, sh) {
    sh.log(args.join(' '));
    return 0;
  },
  async run(args, sh) {
    let status = 0;
    for (const name of args) {
      const text = sh.env[name];
      if (text === undefined) {
        sh.log(`## Error: "${name}" not defined`);
        return 1;
      }
      status = await sh.run(text);
    }
    return status;
  },
  setexpr(args, sh) {
    return setexpr('setexpr', args, sh);
  },
  'setexpr.s'(args, sh) {
    return setexpr('setexpr.s', args, sh);
  },
};

function setexpr(name: string, args: string[], sh: UbootShell): number {
  const [target, ...rest] = args;
  if (!target || rest.length === 0) throw new Error(`U-Boot shell (simulated): ${name} needs a name and a value`);
  const value = (v: string): string | number => {
    if (v.startsWith('*')) {
      const addr = hexArg(v.slice(1), `${name} address`);
      return name === 'setexpr.s' ? sh.memory.readString(addr) : sh.memory.read(addr, 4).readUInt32LE(0);
    }
    return name === 'setexpr.s' ? v : hexArg(v, `${name} operand`);
  };
  if (rest.length === 1) {
    const v = value(rest[0]);
    sh.env[target] = typeof v === 'number' ? v.toString(16) : v;
    return 0;
  }
  if (rest.length === 3 && name === 'setexpr') {
    const a = value(rest[0]) as number;
    const b = value(rest[2]) as number;
    const ops: Record<string, (x: number, y: number) => number> = {
      '+': (x, y) => x + y,
      '-': (x, y) => x - y,
      '*': (x, y) => x * y,
      '/': (x, y) => Math.floor(x / y),
      '%': (x, y) => x % y,
      '&': (x, y) => x & y,
      '|': (x, y) => x | y,
      '^': (x, y) => x ^ y,
    };
    const op = ops[rest[1]];
    if (!op) throw new Error(`U-Boot shell (simulated): setexpr operator ${rest[1]} is not simulated`);
    // U-Boot computes in an unsigned long: 0 - 1 wraps (printed as %lx).
    const r = BigInt.asUintN(64, BigInt(op(a, b)));
    sh.env[target] = r.toString(16);
    return 0;
  }
  throw new Error(`U-Boot shell (simulated): ${name} ${args.join(' ')}: unsupported form`);
}

function lex(text: string): Token[] {
  const tokens: Token[] = [];
  let parts: Part[] | null = null;
  let i = 0;
  const push = (quote: Part['quote'], s: string) => {
    parts ??= [];
    const last = parts[parts.length - 1];
    if (last && last.quote === quote && quote === 'none') last.text += s;
    else parts.push({ text: s, quote });
  };
  const endWord = () => {
    if (parts) tokens.push({ t: 'word', parts });
    parts = null;
  };
  while (i < text.length) {
    const c = text[i];
    if (c === ' ' || c === '\t' || c === '\r') {
      endWord();
      i++;
    } else if (c === '\n' || c === ';') {
      endWord();
      tokens.push({ t: 'op', v: c });
      i++;
    } else if (c === '&' || c === '|') {
      endWord();
      if (text[i + 1] !== c) throw new Error(`U-Boot shell (simulated): "${c}" alone is not supported`);
      tokens.push({ t: 'op', v: c === '&' ? '&&' : '||' });
      i += 2;
    } else if (c === '#' && parts === null) {
      while (i < text.length && text[i] !== '\n') i++;
    } else if (c === '"') {
      let s = '';
      i++;
      while (i < text.length && text[i] !== '"') {
        if (text[i] === '\\' && '"\\$'.includes(text[i + 1] ?? '')) {
          s += text[i + 1];
          i += 2;
        } else s += text[i++];
      }
      if (i >= text.length) throw new Error('U-Boot shell (simulated): unterminated "');
      i++;
      push('double', s);
    } else if (c === "'") {
      const end = text.indexOf("'", i + 1);
      if (end < 0) throw new Error("U-Boot shell (simulated): unterminated '");
      push('single', text.slice(i + 1, end));
      i = end + 1;
    } else if (c === '\\') {
      if (text[i + 1] === '\n') i += 2;
      else {
        push('single', text[i + 1] ?? '');
        i += 2;
      }
    } else if (c === '$' && text[i + 1] === '{') {
      const end = text.indexOf('}', i);
      if (end < 0) throw new Error('U-Boot shell (simulated): unterminated ${');
      push('none', text.slice(i, end + 1));
      i = end + 1;
    } else {
      push('none', c);
      i++;
    }
  }
  endWord();
  return tokens;
}

const KEYWORDS = new Set(['if', 'then', 'elif', 'else', 'fi', 'for', 'in', 'do', 'done']);

class Parser {
  private i = 0;

  constructor(private readonly tokens: Token[]) {}

  program(): Node[] {
    const list = this.list([]);
    if (this.i < this.tokens.length) throw new Error(`U-Boot shell (simulated): unexpected "${this.describe(this.tokens[this.i])}"`);
    return list;
  }

  private keyword(): string | undefined {
    const t = this.tokens[this.i];
    if (t?.t !== 'word' || t.parts.length !== 1 || t.parts[0].quote !== 'none') return undefined;
    return KEYWORDS.has(t.parts[0].text) ? t.parts[0].text : undefined;
  }

  private expectKeyword(k: string): void {
    if (this.keyword() !== k) throw new Error(`U-Boot shell (simulated): expected "${k}", found "${this.describe(this.tokens[this.i])}"`);
    this.i++;
  }

  private skipSeparators(): void {
    while (this.tokens[this.i]?.t === 'op' && [';', '\n'].includes((this.tokens[this.i] as { v: string }).v)) this.i++;
  }

  /** Commands until one of `stop` (a keyword at command position) or the end. */
  private list(stop: string[]): Node[] {
    const nodes: Node[] = [];
    for (;;) {
      this.skipSeparators();
      if (this.i >= this.tokens.length) return nodes;
      const k = this.keyword();
      if (k && stop.includes(k)) return nodes;
      nodes.push(this.andOr());
    }
  }

  private andOr(): Node {
    const first = this.command();
    const rest: { op: '&&' | '||'; node: Node }[] = [];
    for (;;) {
      const t = this.tokens[this.i];
      if (t?.t !== 'op' || (t.v !== '&&' && t.v !== '||')) break;
      this.i++;
      while (this.tokens[this.i]?.t === 'op' && (this.tokens[this.i] as { v: string }).v === '\n') this.i++;
      rest.push({ op: t.v, node: this.command() });
    }
    return rest.length ? { k: 'andor', first, rest } : first;
  }

  private command(): Node {
    const k = this.keyword();
    if (k === 'if') return this.ifClause();
    if (k === 'for') return this.forClause();
    if (k) throw new Error(`U-Boot shell (simulated): unexpected "${k}"`);
    const words: Part[][] = [];
    while (this.tokens[this.i]?.t === 'word') words.push((this.tokens[this.i++] as { parts: Part[] }).parts);
    return { k: 'simple', words };
  }

  private ifClause(): Node {
    this.expectKeyword('if');
    const branches: { cond: Node[]; body: Node[] }[] = [];
    let cond = this.list(['then']);
    this.expectKeyword('then');
    let body = this.list(['elif', 'else', 'fi']);
    branches.push({ cond, body });
    let otherwise: Node[] | undefined;
    for (;;) {
      const k = this.keyword();
      if (k === 'elif') {
        this.i++;
        cond = this.list(['then']);
        this.expectKeyword('then');
        body = this.list(['elif', 'else', 'fi']);
        branches.push({ cond, body });
      } else if (k === 'else') {
        this.i++;
        otherwise = this.list(['fi']);
      } else break;
    }
    this.expectKeyword('fi');
    return { k: 'if', branches, otherwise };
  }

  private forClause(): Node {
    this.expectKeyword('for');
    const t = this.tokens[this.i++];
    if (t?.t !== 'word' || t.parts.length !== 1 || t.parts[0].quote !== 'none') throw new Error('U-Boot shell (simulated): for needs a variable name');
    const name = t.parts[0].text;
    this.expectKeyword('in');
    const words: Part[][] = [];
    while (this.tokens[this.i]?.t === 'word' && this.keyword() !== 'do') words.push((this.tokens[this.i++] as { parts: Part[] }).parts);
    this.skipSeparators();
    this.expectKeyword('do');
    const body = this.list(['done']);
    this.expectKeyword('done');
    return { k: 'for', name, words, body };
  }

  private describe(t: Token | undefined): string {
    if (!t) return 'end of script';
    if (t.t === 'op') return t.v === '\n' ? 'newline' : t.v;
    return t.parts.map((p) => p.text).join('');
  }
}
