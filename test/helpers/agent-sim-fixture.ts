/**
 * What the agent-on-a-simulated-board tests share: the gateway example built as 1.0 and 1.1 for a
 * board, 1.1 published to a release repository behind a local HTTP server, and simulated devices
 * that boot 1.0 from a copy of the real image.
 */
import { createHash } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { FatReader } from '../../src/fs/fat-reader.js';
import { verifyVerity } from '../../src/fs/verity.js';
import type { ImageManifest, SignedManifest } from '../../src/image/manifest.js';
import type { AgentConfigInput } from '../../src/ota/agent/config.js';
import type { SimBootChain } from '../../src/ota/sim/boot-chains.js';
import { testDir, type BuiltImage } from './built-images.js';
import { agentRepo, publish, type AgentRepo } from './ota-agent-images.js';
import { startAgentServer, type AgentServer } from './ota-agent-server.js';
import { simAgentDevice, type SimAgentSetup } from './ota-agent-sim.js';
import { gatewayImages } from './ota-repo-fixtures.js';

export interface AgentSimFixture {
  v1: BuiltImage;
  v2: BuiltImage;
  m1: ImageManifest;
  m2: ImageManifest;
  repo: AgentRepo;
  server: AgentServer;
  /** A new simulated device running 1.0, powered on. */
  device(o?: { server?: string; config?: Partial<AgentConfigInput>; chain?: SimBootChain }): Promise<SimAgentSetup>;
  /** The device's boot partition (ESP or FAT boot partition) copied to a file, for mtools and fsck. */
  bootPartition(s: SimAgentSetup): string;
  close(): Promise<void>;
}

const manifestOf = (b: BuiltImage) => (JSON.parse(readFileSync(b.manifest, 'utf8')) as SignedManifest).signed;
const rootHash = (m: ImageManifest) => m.payloads.find((p) => p.partition === 'system-a')!.verity!.rootHash;

/** `name` is the folder under the test directory; `board` the gateway's board (default qemu-x86_64). */
export async function agentSimFixture(name: string, board?: string): Promise<AgentSimFixture> {
  const { v1, v2 } = await gatewayImages(board);
  const m1 = manifestOf(v1);
  const m2 = manifestOf(v2);
  const repo = await agentRepo(name);
  await publish(repo, v2.image, '1.1');
  const server = await startAgentServer(repo.repo);
  const versions = new Map([[rootHash(m1), '1.0'], [rootHash(m2), '1.1']]);
  // The simulated firmware boots only kernels it knows: the one the image carries.
  const reader = await FatReader.open(v1.image, m1.partitions.find((p) => p.role === 'boot')!.start);
  const working = new Set([createHash('sha256').update(await reader.readFile(m1.slots.a.kernel)).digest('hex')]);
  await reader.close();
  const home = join(testDir(), name);
  let runs = 0;
  return {
    v1, v2, m1, m2, repo, server,
    device: async (o = {}) => {
      const dir = join(home, String(runs++));
      mkdirSync(dir, { recursive: true });
      const s = await simAgentDevice({
        image: v1.image, manifest: m1, copy: join(home, 'disk.img'), workingKernels: working, versions, stateDir: join(dir, 'state'),
        trustedRoot: repo.root, server: o.server ?? server.url, config: o.config, chain: o.chain,
      });
      await s.dev.powerOn();
      return s;
    },
    bootPartition: (s) => {
      const out = join(home, 'boot.img');
      const buf = Buffer.alloc(s.dev.layout.boot.size);
      const fd = openSync(s.dev.disk.path, 'r');
      try {
        readSync(fd, buf, 0, buf.length, s.dev.layout.boot.start);
      } finally {
        closeSync(fd);
      }
      writeFileSync(out, buf);
      return out;
    },
    close: () => server.close(),
  };
}

/** The running slot verifies on the device's disk against the root hash its boot entry names. */
export async function expectBootedVerifies(s: SimAgentSetup): Promise<void> {
  const b = s.dev.booted!;
  const m = /edgekit\.verity=([0-9a-f]+):([0-9a-f]*):(\d+):(\d+)/.exec(b.cmdline)!;
  const r = await verifyVerity(s.dev.disk.path, { offset: s.dev.layout.slots[b.slot].start, rootHash: m[1], salt: m[2], dataBlocks: Number(m[3]), hashOffset: Number(m[4]) * 4096 });
  expect(r.ok, JSON.stringify(r)).toBe(true);
}

/** The device's reports as 'state version' lines, without the 'checking' ones. */
export const reportStates = (s: SimAgentSetup) => s.reports.filter((r) => r.state !== 'checking').map((r) => `${r.state}${r.version ? ' ' + r.version : ''}`);
