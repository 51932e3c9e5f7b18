/**
 * `edgekit boards` as a board vendor meets it: the real CLI (bin/edgekit.js, built by `npm run
 * build`) listing, showing and checking board files. Broken fixtures carry a `# problem: <field>`
 * marker on each line that must be reported, so expected line numbers come from the fixture text.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'bin', 'edgekit.js');
const FIXTURES = 'test/fixtures/boards';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the CLI from the repository root; never throws on a non-zero exit. */
function edgekit(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { cwd: ROOT, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

function lines(s: string): string[] {
  return s.split('\n').filter((l) => l !== '');
}

interface Marker {
  line: number;
  field: string;
}

/** `# problem: <field>` markers of a fixture, with their 1-based line numbers. */
function markers(file: string): Marker[] {
  return readFileSync(join(ROOT, file), 'utf8')
    .split('\n')
    .flatMap((text, i) => {
      const m = /#\s*problem:\s*(\S+)/.exec(text);
      return m ? [{ line: i + 1, field: m[1] }] : [];
    });
}

/** The `file:line: ...` lines a check printed for one file. */
function problemLines(out: string, file: string): string[] {
  return lines(out).filter((l) => l.startsWith(`${file}:`) && !l.startsWith(`${file}: ok`));
}

function lineNumber(problem: string, file: string): number {
  const m = new RegExp(`^${escape(file)}:(\\d+): `).exec(problem);
  if (!m) throw new Error(`not a file:line problem: ${problem}`);
  return Number(m[1]);
}

const shippedIds = readdirSync(join(ROOT, 'boards'))
  .filter((f) => f.endsWith('.yml'))
  .map((f) => f.slice(0, -4))
  .sort();
const shippedYaml = (id: string) => parse(readFileSync(join(ROOT, 'boards', `${id}.yml`), 'utf8'));

let tmp: string;
beforeAll(() => {
  tmp = mkdtempSync(join(process.env.EDGEKIT_TEST_DIR ?? tmpdir(), 'boards-'));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('edgekit boards (list)', () => {
  it('ships the nine boards this release documents', () => {
    expect(shippedIds).toEqual(['generic-arm64', 'generic-x86_64', 'qemu-arm64', 'qemu-x86_64', 'rpi-cm4', 'rpi-zero2w', 'rpi3', 'rpi4', 'rpi5']);
  });

  it('lists every shipped board, one line each, with its name', async () => {
    const r = await edgekit('boards');
    expect(r.code).toBe(0);
    const out = lines(r.stdout);
    expect(out).toHaveLength(shippedIds.length);
    shippedIds.forEach((id, i) => {
      expect(out[i].split(/\s+/)[0]).toBe(id);
      expect(out[i]).toContain(shippedYaml(id).name);
    });
  });

  it('--json gives each board\'s id, name, arch, boot chain, media and emulation from its file', async () => {
    const r = await edgekit('boards', '--json');
    expect(r.code).toBe(0);
    const rows = JSON.parse(r.stdout) as Array<Record<string, unknown>>;
    expect(rows.map((x) => x.id)).toEqual(shippedIds);
    for (const row of rows) {
      const y = shippedYaml(row.id as string);
      expect(row).toEqual({
        id: y.id,
        name: y.name,
        arch: y.arch,
        boot: `${y.boot.firmware}/${y.update.bootchooser}`,
        media: y.flash.media,
        qemu: y.emulation !== undefined,
      });
    }
  });
});

describe('edgekit boards show', () => {
  it('prints rpi4 as YAML that parses back, equals --json, and checks clean as a board file', async () => {
    const r = await edgekit('boards', 'show', 'rpi4');
    expect(r.code).toBe(0);
    const shown = parse(r.stdout);
    const json = await edgekit('boards', 'show', 'rpi4', '--json');
    expect(json.code).toBe(0);
    expect(shown).toEqual(JSON.parse(json.stdout));

    const src = shippedYaml('rpi4');
    expect(shown.id).toBe('rpi4');
    expect(shown.boot).toMatchObject({ firmware: 'rpi', model: 'rpi4', loader: 'uboot', uboot: { file: src.boot.uboot.file } });
    // Sizes come out in bytes: the source's "128MiB" etc.
    for (const part of ['boot', 'system', 'config', 'data']) {
      const m = /^(\d+)MiB$/.exec(src.layout[part].size);
      expect(m, `${part} size in boards/rpi4.yml`).not.toBeNull();
      expect(shown.layout[part].size).toBe(Number(m![1]) * 1024 * 1024);
    }

    const copy = join(tmp, 'rpi4-shown.yml');
    writeFileSync(copy, r.stdout);
    const check = await edgekit('boards', 'check', copy);
    expect(check.stdout.trim()).toBe(`${copy}: ok (board rpi4)`);
    expect(check.code).toBe(0);
  });

  it('names the known boards when asked for an unknown one', async () => {
    const r = await edgekit('boards', 'show', 'no-such-board');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('unknown board "no-such-board"');
    for (const id of shippedIds) expect(r.stderr).toContain(id);
  });
});

describe('edgekit boards check', () => {
  it('passes every shipped board', async () => {
    const files = shippedIds.map((id) => `boards/${id}.yml`);
    const r = await edgekit('boards', 'check', ...files);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(lines(r.stdout)).toEqual(shippedIds.map((id) => `boards/${id}.yml: ok (board ${id})`));
  });

  const ruleFixtures = ['broken-schema.yml', 'broken-rpi-rules.yml', 'broken-uefi-rules.yml', 'broken-rpi-no-uboot.yml'];
  for (const name of ruleFixtures) {
    it(`reports each problem of ${name} at its line, with its field`, async () => {
      const file = `${FIXTURES}/${name}`;
      const want = markers(file);
      expect(want.length).toBeGreaterThan(0);
      const r = await edgekit('boards', 'check', file);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain('1 of 1 board file(s) have problems');
      const got = problemLines(r.stdout, file);
      for (const m of want) {
        expect(got, `${m.field} at line ${m.line}`).toContainEqual(expect.stringMatching(new RegExp(`^${escape(file)}:${m.line}: ${escape(m.field)}: \\S`)));
      }
      expect(got, 'no problems besides the marked ones').toHaveLength(want.length);
    });
  }

  it('reports a misspelled size with the units it takes', async () => {
    const file = `${FIXTURES}/broken-schema.yml`;
    const r = await edgekit('boards', 'check', file);
    const sizeLine = markers(file).find((m) => m.field === 'layout.boot.size')!.line;
    expect(problemLines(r.stdout, file)).toContain(`${file}:${sizeLine}: layout.boot.size: not a size: "64MB" (write e.g. 64MiB)`);
  });

  it('reports a tab-indented line as invalid YAML at that line', async () => {
    const file = `${FIXTURES}/malformed-tab.yml`;
    const [m] = markers(file);
    const r = await edgekit('boards', 'check', file);
    expect(r.code).not.toBe(0);
    const got = problemLines(r.stdout, file);
    expect(got).toHaveLength(1);
    expect(got[0]).toMatch(new RegExp(`^${escape(file)}:${m.line}: invalid YAML: .*[Tt]ab`));
  });

  it('reports a stray bracket as invalid YAML, first at its line', async () => {
    const file = `${FIXTURES}/malformed-bracket.yml`;
    const [m] = markers(file);
    const r = await edgekit('boards', 'check', file);
    expect(r.code).not.toBe(0);
    const got = problemLines(r.stdout, file);
    expect(got.length).toBeGreaterThan(0);
    expect(lineNumber(got[0], file)).toBe(m.line);
    for (const p of got) expect(p).toMatch(/: invalid YAML: /);
  });

  it('checks several files at once: good ones ok, every broken one reported, exit non-zero', async () => {
    const broken = [...ruleFixtures, 'malformed-tab.yml'].map((n) => `${FIXTURES}/${n}`);
    const good = `${FIXTURES}/acme-x86-gateway.yml`;
    const r = await edgekit('boards', 'check', good, ...broken);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`${broken.length} of ${broken.length + 1} board file(s) have problems`);
    expect(lines(r.stdout)).toContain(`${good}: ok (board acme-x86-gateway)`);
    for (const file of broken) expect(problemLines(r.stdout, file).length).toBe(Math.max(1, markers(file).length));
  });

  it('--json gives per-file results with the same problem lines', async () => {
    const file = `${FIXTURES}/broken-rpi-rules.yml`;
    const good = `${FIXTURES}/acme-x86-gateway.yml`;
    const text = await edgekit('boards', 'check', file);
    const r = await edgekit('boards', 'check', good, file, '--json');
    expect(r.code).not.toBe(0);
    const results = JSON.parse(r.stdout);
    expect(results).toEqual([
      { file: good, ok: true, id: 'acme-x86-gateway', problems: [] },
      { file, ok: false, problems: problemLines(text.stdout, file) },
    ]);
  });

  it('reports a file that cannot be read', async () => {
    const file = `${FIXTURES}/does-not-exist.yml`;
    const r = await edgekit('boards', 'check', file);
    expect(r.code).not.toBe(0);
    expect(r.stdout).toContain(`${file}: cannot read: ENOENT`);
  });
});

describe('board limits', () => {
  it('rpi5 refuses a root on disk (gateway.yml) with the board\'s own message, before writing anything', async () => {
    const key = join(tmp, 'k.key');
    if (!existsSync(key)) expect((await edgekit('keys', 'generate', '-o', key)).code).toBe(0);
    const out = join(tmp, 'rpi5-gateway');
    const r = await edgekit('build', 'examples/gateway.yml', '--board', 'rpi5', '--key', key, '-o', out);
    expect(r.code).not.toBe(0);
    const limit = shippedYaml('rpi5').limits.find((l: { when: string }) => l.when === 'root-on-disk');
    expect(limit.message).toContain('MMC_SDHCI_BRCMSTB');
    expect(r.stderr.trim()).toBe(`edgekit: examples/gateway.yml: board rpi5: ${limit.message}`);
    expect(existsSync(out)).toBe(false);
  });
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
