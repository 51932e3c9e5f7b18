/**
 * The update agent's configuration in the image (/etc/edgekit/update.json) and the release
 * repository's root metadata the image trusts (/etc/edgekit/root.json: public keys only), from
 * the image spec's `update:` and the board's update settings.
 *
 * Spec: `update: { server?, fleet?: { server }, channel, root: path/to/root.json (relative to
 * the spec), health?, dataBudget?, checkInterval? }`. `root` is the repository's
 * metadata/root.json (`edgekit repo init` writes it). With `fleet`, the fleet server chooses the
 * release and names the repository; `server` is then only the repository it falls back to.
 */
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { Board } from '../spec/board.js';
import type { ImageSpec } from '../spec/image-spec.js';
import type { Tree } from '../tree/tree.js';
import { EdgekitError } from '../util/errors.js';
import { parseAgentConfig, type AgentConfig, type AgentConfigInput } from '../ota/agent/config.js';

export const UPDATE_CONFIG_FILE = 'etc/edgekit/update.json';
export const TRUSTED_ROOT_FILE = 'etc/edgekit/root.json';

/** The spec's update section with the fields the agent adds (until the spec schema has them). */
export type UpdateSection = NonNullable<ImageSpec['update']> & {
  root?: string;
  health?: AgentConfigInput['health'];
  dataBudget?: number;
  checkInterval?: number;
};

export function agentConfigFor(spec: Pick<ImageSpec, 'name' | 'version'> & { update?: UpdateSection }, board: Pick<Board, 'id' | 'update'>, epoch?: number): AgentConfig {
  const u = spec.update ?? { channel: 'stable' };
  return parseAgentConfig(
    {
      server: u.server,
      ...(u.fleet ? { fleet: { server: u.fleet.server, ...(u.fleet.keyRotationDays !== undefined ? { keyRotationDays: u.fleet.keyRotationDays } : {}) } } : {}),
      channel: u.channel,
      name: spec.name,
      board: board.id,
      version: spec.version,
      trustedRoot: `/${TRUSTED_ROOT_FILE}`,
      builtAt: epoch,
      tries: board.update.tries,
      bootchooser: board.update.bootchooser,
      ...(u.health ? { health: u.health } : {}),
      ...(u.dataBudget !== undefined ? { dataBudget: u.dataBudget } : {}),
      ...(u.checkInterval !== undefined ? { checkInterval: u.checkInterval } : {}),
    },
    'image spec update',
  );
}

/** The JSON file as written into the image (stable key order, so builds stay reproducible). */
export function agentConfigText(config: AgentConfig): string {
  return JSON.stringify(config, null, 2) + '\n';
}

/**
 * Adds update.json and root.json to the root tree. Called by the builder for images whose spec
 * has `update:` and that use the ota-agent overlay.
 */
export async function addUpdateConfig(tree: Tree, o: { spec: ImageSpec; specFile: string; board: Board; epoch?: number }): Promise<void> {
  const update = o.spec.update as UpdateSection | undefined;
  if (!update) return;
  if (!update.root) throw new EdgekitError(`${o.specFile}: update.root: name the release repository's metadata/root.json (the keys this image trusts)`);
  const rootPath = resolve(dirname(o.specFile), update.root);
  const root = await readFile(rootPath).catch(() => {
    throw new EdgekitError(`${o.specFile}: update.root: cannot read ${rootPath}`);
  });
  let parsed: { signed?: { _type?: string } };
  try {
    parsed = JSON.parse(root.toString('utf8'));
  } catch {
    throw new EdgekitError(`${rootPath}: not JSON (update.root must be a TUF root.json)`);
  }
  if (parsed.signed?._type !== 'root') throw new EdgekitError(`${rootPath}: not TUF root metadata (update.root)`);
  tree.file(TRUSTED_ROOT_FILE, root);
  tree.file(UPDATE_CONFIG_FILE, agentConfigText(agentConfigFor({ ...o.spec, update }, o.board, o.epoch)));
}
