/**
 * Images with the update agent for the agent's tests: the gateway example with nodejs and the
 * ota-agent overlay, pointed at a test release server, trusting a test repository's root keys.
 * The agent's update.json comes from the builder's own function (src/build/update-config.ts).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { extractRange } from './image-bytes.js';
import type { ImageManifest } from '../../src/image/manifest.js';
import { REPO, builtImage, edgekit, testDir, type BuiltImage } from './built-images.js';
import { stringify } from 'yaml';
import type { UpdateSection } from '../../src/build/update-config.js';

export interface AgentRepo {
  repo: string;
  keys: string;
  root: string;
}

/**
 * A release repository for the run (made once per name), with one key per role. Each test file
 * takes its own name: files publish the same version numbers with different images.
 */
export async function agentRepo(name: string): Promise<AgentRepo> {
  const repo = join(testDir(), `${name}-repo`);
  const keys = join(testDir(), `${name}-keys`);
  if (!existsSync(join(repo, 'metadata', 'root.json'))) {
    const r = await edgekit(['repo', 'init', repo, '--keys', keys]);
    if (r.code !== 0) throw new Error(`repo init: ${r.stderr}`);
  }
  return { repo, keys, root: join(repo, 'metadata', 'root.json') };
}

let bundled = false;
/** The overlay's agent.mjs, bundled from the sources of this checkout. */
export function bundleAgent(): void {
  if (bundled) return;
  execFileSync(join(REPO, 'scripts', 'bundle-agent'), { cwd: REPO, stdio: 'pipe' });
  bundled = true;
}

export interface AgentImageOptions {
  version: string;
  /** The release server (static repository mode)... */
  server?: string;
  /** ...or the fleet server that manages the device (update.fleet.server). */
  fleet?: string;
  health?: UpdateSection['health'];
  checkInterval?: number;
  hostname?: string;
}

/** gateway.yml + nodejs + ota-agent, at `version`, updating from `server` or managed by `fleet`. */
export async function agentImage(repo: AgentRepo, o: AgentImageOptions): Promise<BuiltImage> {
  bundleAgent();
  const base = readFileSync(join(REPO, 'examples', 'gateway.yml'), 'utf8');
  // The builder writes update.json and root.json itself from the spec's update: section.
  const update: UpdateSection = {
    ...(o.server ? { server: o.server } : {}),
    ...(o.fleet ? { fleet: { server: o.fleet } } : {}),
    channel: 'stable', root: repo.root, checkInterval: o.checkInterval ?? 15, ...(o.health ? { health: o.health } : {}),
  };
  let spec = base
    .replace(/^version: .*$/m, `version: "${o.version}"`)
    .replace(/^hostname: .*$/m, `hostname: ${o.hostname ?? `gateway-${o.version.replace(/\W/g, '-')}`}`)
    .replace(/^packages: \[busybox-static\]$/m, 'packages: [busybox-static, nodejs]')
    .replace(/^ {2}# - ota-agent.*$/m, '  - ota-agent')
    .replace(/^update:\n {2}channel: stable\n?/m, '');
  if (spec === base || /update:/.test(spec.replace(/^#.*$/gm, ''))) throw new Error('gateway.yml changed shape: adjust test/helpers/ota-agent-images.ts');
  spec += stringify({ update });
  const dir = join(testDir(), 'specs', `agent-${o.version}-${createTag(o)}`);
  mkdirSync(dir, { recursive: true });
  const path = join(dir, 'gateway.yml');
  writeFileSync(path, spec);
  return builtImage(path, 'qemu-x86_64');
}

function createTag(o: AgentImageOptions): string {
  return createHash('sha256').update(JSON.stringify(o)).digest('hex').slice(0, 12);
}

/** Publishes a built image as release `version` on the stable channel. */
export async function publish(repo: AgentRepo, image: string, version: string, extra: string[] = []): Promise<void> {
  const r = await edgekit(['release', image, '--repo', repo.repo, '--keys', repo.keys, '--version', version, ...extra]);
  if (r.code !== 0) throw new Error(`release ${version}: ${r.stderr}`);
}

/**
 * A device whose boot partition and slots are files named like /dev/vda1.. are: the boot partition
 * and slot A cut from `image`, slot B empty. Returns its partition map (for `--partitions`).
 */
export function devicePartitionFiles(image: string, manifest: ImageManifest, home: string): string {
  mkdirSync(join(home, 'dev'), { recursive: true });
  const part = (role: string) => manifest.partitions.find((p) => p.role === role)!;
  extractRange(image, part('boot').start, part('boot').size, join(home, 'dev', 'part1'));
  extractRange(image, part('system-a').start, part('system-a').size, join(home, 'dev', 'part2'));
  writeFileSync(join(home, 'dev', 'part3'), '');
  truncateSync(join(home, 'dev', 'part3'), part('system-b').size);
  const partitions = join(home, 'partitions');
  writeFileSync(partitions, `table gpt\ndisk ${join(home, 'dev', 'part')}\npart boot 1\npart system-a 2\npart system-b 3\n`);
  return partitions;
}
