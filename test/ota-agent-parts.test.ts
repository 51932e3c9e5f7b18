/**
 * The agent's small parts: the image's update.json and root.json from a spec, the partition map,
 * report lines, backoff, and the watchdog ending a process that stopped making progress.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Tree, readContent, type FileEntry } from '../src/tree/tree.js';
import { addUpdateConfig, agentConfigFor } from '../src/build/update-config.js';
import { parseAgentConfig } from '../src/ota/agent/config.js';
import { parsePartitions, partitionPath } from '../src/ota/agent/device-host.js';
import { reportLine } from '../src/ota/agent/reports.js';
import { backoffMs } from '../src/ota/agent/transfer.js';
import { loadBoard } from '../src/spec/board.js';
import type { ImageSpec } from '../src/spec/image-spec.js';
import { REPO } from './helpers/built-images.js';

const board = loadBoard('qemu-x86_64').value;
const dir = mkdtempSync(join(tmpdir(), 'agent-parts-'));
const spec = (update: Record<string, unknown>) => ({ name: 'gateway', version: '2.3', update }) as unknown as ImageSpec;

describe('update configuration in the image', () => {
  it('writes update.json from the spec and board, and the repository root beside it', async () => {
    const root = { signed: { _type: 'root', version: 1 }, signatures: [] };
    writeFileSync(join(dir, 'root.json'), JSON.stringify(root));
    const tree = new Tree();
    await addUpdateConfig(tree, { spec: spec({ server: 'http://updates.example', channel: 'beta', root: 'root.json' }), specFile: join(dir, 'spec.yml'), board, epoch: 1_700_000_000 });
    const text = (await readContent((tree.get('etc/edgekit/update.json') as FileEntry).content)).toString();
    const config = parseAgentConfig(JSON.parse(text), 'update.json');
    expect(config).toMatchObject({ server: 'http://updates.example', channel: 'beta', name: 'gateway', board: 'qemu-x86_64', version: '2.3', tries: board.update.tries, builtAt: 1_700_000_000, trustedRoot: '/etc/edgekit/root.json' });
    expect(JSON.parse((await readContent((tree.get('etc/edgekit/root.json') as FileEntry).content)).toString())).toEqual(root);
  });

  it('names the spec and the field when update.root is missing or not TUF root metadata', async () => {
    const specFile = join(dir, 'spec.yml');
    await expect(addUpdateConfig(new Tree(), { spec: spec({ channel: 'stable' }), specFile, board })).rejects.toThrow(`${specFile}: update.root: name the release repository's metadata/root.json`);
    writeFileSync(join(dir, 'targets.json'), JSON.stringify({ signed: { _type: 'targets' } }));
    await expect(addUpdateConfig(new Tree(), { spec: spec({ channel: 'stable', root: 'targets.json' }), specFile, board })).rejects.toThrow(/targets\.json: not TUF root metadata \(update\.root\)$/);
  });

  it('refuses a configuration with a wrong field, naming it', () => {
    expect(() => parseAgentConfig({ ...agentConfigFor(spec({ channel: 'stable' }), board), tries: 12 }, '/etc/edgekit/update.json')).toThrow(/^\/etc\/edgekit\/update\.json: tries: /);
  });
});

describe('agent parts', () => {
  it('finds partitions from /etc/edgekit/partitions as the builder writes it', () => {
    const map = parsePartitions('table gpt\ndisk /dev/mmcblk0p\npart boot 1\npart system-a 2\npart system-b 3\npart data 5\n');
    expect(partitionPath(map, 'system-b')).toBe('/dev/mmcblk0p3');
    expect(() => partitionPath(parsePartitions('disk /dev/vda\npart boot 1\n'), 'system-a')).toThrow(/no system-a partition/);
  });

  it('backs off 1 s, 2 s, 4 s ... up to the cap', () => {
    expect([2, 3, 4, 5, 9].map((n) => backoffMs(n, 10_000))).toEqual([1000, 2000, 4000, 8000, 10_000]);
  });

  it('writes one console line per report', () => {
    expect(reportLine({ state: 'downloading', version: '1.1', running: '1.0', slot: 'a', name: 'g', board: 'b', bytes: 42, method: 'delta' })).toBe('edgekit-agent: downloading 1.1 bytes=42 method=delta slot=a running=1.0');
    expect(reportLine({ state: 'rolled-back', version: '1.2', running: '1.1', slot: 'b', name: 'g', board: 'b', reason: 'why' })).toBe('edgekit-agent: rolled-back 1.2 slot=b running=1.1: why');
  });

  it('the watchdog ends a process whose work stopped, so init can restart it', () => {
    const script = `import { startWatchdog } from '${join(REPO, 'dist', 'ota', 'agent', 'service.js')}';
      startWatchdog(0.3, (l) => console.log(l));
      setInterval(() => {}, 1000); // a hung download: the event loop is alive, the work is not`;
    const r = spawnSync('node', ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status).toBe(70);
    expect(r.stdout).toMatch(/^edgekit-agent: no progress for 0\.3 s: exiting so init restarts the agent$/m);
  });
});
