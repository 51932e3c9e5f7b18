/**
 * A vendor's board that edgekit does not ship (test/fixtures/boards/acme-x86-gateway.yml): checked
 * with `edgekit boards check`, built with the real builder from its path, and the image read back
 * with the tools that read each format (sfdisk, minfo/mtype/mcopy, gzip + cpio), so the board's
 * layout, console, command line, boot disk and modules must all show in the bytes.
 *
 * The build fetches Debian packages into the edgekit cache (~/.cache/edgekit): seconds when warm,
 * minutes on a first run.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'bin', 'edgekit.js');
const BOARD_FILE = 'test/fixtures/boards/acme-x86-gateway.yml';
const board = parse(readFileSync(join(ROOT, BOARD_FILE), 'utf8'));
const BUILD_TIMEOUT_MS = 20 * 60_000;
const ESP_GUID = 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd: ROOT, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

const edgekit = (...args: string[]) => run(process.execPath, [CLI, ...args]);

async function ok(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** "72MiB" -> bytes; the fixture writes sizes in MiB so this stays independent of src/spec/size.ts. */
function mib(size: string): number {
  const m = /^(\d+)MiB$/.exec(size);
  if (!m) throw new Error(`fixture size ${size}: write it in MiB`);
  return Number(m[1]) * 1024 * 1024;
}

let tmp: string;
let image: string;
let espOffset: number;

beforeAll(() => {
  tmp = mkdtempSync(join(process.env.EDGEKIT_TEST_DIR ?? tmpdir(), 'vendor-board-'));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('a vendor board from one file', () => {
  it('is not a shipped board', async () => {
    const r = await edgekit('boards', '--json');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).map((b: { id: string }) => b.id)).not.toContain(board.id);
  });

  it('passes edgekit boards check and shows with its defaults applied', async () => {
    const check = await edgekit('boards', 'check', BOARD_FILE);
    expect(check.code).toBe(0);
    expect(check.stdout.trim()).toBe(`${BOARD_FILE}: ok (board ${board.id})`);
    const show = await edgekit('boards', 'show', BOARD_FILE, '--json');
    expect(show.code).toBe(0);
    const shown = JSON.parse(show.stdout);
    expect(shown.id).toBe(board.id);
    expect(shown.layout.alignment).toBe(mib(board.layout.alignment));
  });

  it('builds minimal.yml with the real builder from the board file\'s path', async () => {
    const key = join(tmp, 'vendor.key');
    await ok(process.execPath, [CLI, 'keys', 'generate', '-o', key]);
    const out = join(tmp, 'out');
    const r = await edgekit('build', 'examples/minimal.yml', '--board', BOARD_FILE, '--key', key, '-o', out, '--json');
    expect(r.stderr.split('\n').filter((l) => l.startsWith('edgekit:'))).toEqual([]);
    expect(r.code).toBe(0);
    const result = JSON.parse(r.stdout);
    expect(result.board).toBe(board.id);
    image = result.image;
    expect(image).toBe(join(out, `minimal-${board.id}.img`));

    const verify = await edgekit('verify', image, '--pubkey', `${key}.pub`);
    expect(verify.stderr).toBe('');
    expect(verify.code).toBe(0);
  }, BUILD_TIMEOUT_MS);

  it('lays the image out as the board says (sfdisk)', async () => {
    expect(image, 'the build test ran').toBeDefined();
    const table = JSON.parse(await ok('sfdisk', ['--json', image])).partitiontable;
    expect(table.label).toBe(board.layout.table);
    expect(table.sectorsize).toBe(512);
    // A root in RAM: no system slots on disk, so boot, config, data in that order.
    const parts = table.partitions as Array<{ start: number; size: number; type: string; name: string }>;
    expect(parts.map((p) => p.name)).toEqual(['boot', 'config', 'data']);
    const align = mib(board.layout.alignment);
    expect(parts[0].start * 512).toBe(align);
    for (const p of parts) {
      expect(p.size * 512, `${p.name} size`).toBe(mib(board.layout[p.name].size));
      expect((p.start * 512) % align, `${p.name} start aligned`).toBe(0);
    }
    expect(parts[0].type).toBe(ESP_GUID);
    espOffset = parts[0].start * 512;
  });

  it('names the board in the signed manifest (edgekit inspect) and uses its console and command line', async () => {
    const r = await edgekit('inspect', image, '--json');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    const m = report.manifest.signed;
    expect(m.board).toBe(board.id);
    expect(m.arch).toBe(board.arch);
    expect(m.bootchooser).toBe(board.update.bootchooser);
    const words = m.slots.a.cmdline.split(' ');
    expect(words[0]).toBe(`console=${board.console.device},${board.console.baud}`);
    for (const w of board.cmdline) expect(words).toContain(w);
    expect(words).toContain('edgekit.slot=a');
    const starts = JSON.parse(await ok('sfdisk', ['--json', image])).partitiontable.partitions.map((p: { start: number }) => p.start * 512);
    expect(m.partitions.map((p: { start: number }) => p.start)).toEqual(starts);
  });

  it('puts a FAT the size of the board\'s boot partition on the ESP, with systemd-boot and the slot A entry', async () => {
    const img = `${image}@@${espOffset}`;
    const info = await ok('minfo', ['-i', img, '::']);
    expect(Number(/big size: (\d+) sectors/.exec(info)?.[1]) * 512).toBe(mib(board.layout.boot.size));
    expect(Number(/hidden sectors: (\d+)/.exec(info)?.[1]) * 512).toBe(espOffset);
    const listing = await ok('mdir', ['-i', img, '-/', '-b', '::']);
    expect(listing.split('\n')).toContain(`::/${board.boot.loaderTarget}`);
    const entry = await ok('mtype', ['-i', img, '::loader/entries/edgekit-1-a.conf']);
    expect(entry).toMatch(new RegExp(`^options console=${board.console.device},${board.console.baud} `, 'm'));
  });

  it('gives the initramfs the board\'s console, boot disk and disk modules (cpio)', async () => {
    const img = `${image}@@${espOffset}`;
    const initrd = join(tmp, 'initrd.img');
    await ok('mcopy', ['-o', '-i', img, '::slot-a/initrd.img', initrd]);
    const cpioOut = join(tmp, 'initrd.cpio');
    writeFileSync(cpioOut, execFileSync('gzip', ['-dc', initrd], { maxBuffer: 512 << 20 }));
    const file = async (path: string) => ok('cpio', ['-i', '--quiet', '--to-stdout', '-F', cpioOut, path]);

    expect((await file('etc/inittab')).split('\n')).toContain(
      `${board.console.device}::respawn:/usr/sbin/getty -L ${board.console.baud} ${board.console.device} vt100`,
    );
    const partitions = (await file('etc/edgekit/partitions')).split('\n');
    expect(partitions).toContain(`table ${board.layout.table}`);
    expect(partitions).toContain(`disk /dev/${board.disk.device}${board.disk.partitionPrefix}`);
    expect(partitions).toEqual(expect.arrayContaining(['part boot 1', 'part config 2', 'part data 3']));

    const modules = (await file('etc/edgekit/modules')).split('\n');
    const names = (await ok('cpio', ['-t', '--quiet', '-F', cpioOut])).split('\n');
    // Modules the kernel has built in are not files; the storage drivers below are modules in Debian's kernel.
    for (const m of ['ahci', 'sd_mod', 'nvme', 'virtio_blk']) {
      expect(board.modules).toContain(m);
      expect(modules).toContain(m);
      expect(names).toContain(`usr/lib/modules/edgekit/${m}.ko`);
    }
  });
});
