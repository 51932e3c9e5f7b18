/**
 * The agent's configuration: /etc/edgekit/update.json in the image, written by the builder from the
 * image spec's `update:` (see update-config in src/build) and the board's update settings. It is
 * part of the slot, so each release brings its own health checks.
 */
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { EdgekitError } from '../../util/errors.js';

export const AGENT_CONFIG_PATH = '/etc/edgekit/update.json';

const httpUrl = z.string().refine((u) => /^https?:\/\/[^/]/.test(u), 'an http:// or https:// URL');

/**
 * A fleet server (`edgekit serve`) manages this device: the agent authenticates with its own key,
 * checks in, installs the release the server offers (verified against the trusted root as
 * always) and sends its reports there, queued on /data until delivered.
 */
export const fleetConfigSchema = z.strictObject({
  server: httpUrl,
  /** The device's ed25519 private key (PKCS#8 PEM, mode 0600), made on first start; on /data so it survives updates. */
  keyFile: z.string().default('/data/edgekit/device-key.pem'),
  /** The config partition the flasher writes: `device-id`, `provisioning-token`. */
  configDir: z.string().default('/config'),
  /** Seconds before the next check-in while the device waits for acceptance or cannot reach the server; doubles up to checkInterval. */
  retry: z.number().positive().default(30),
  /** Reports kept until the server has them; beyond this the oldest progress reports are dropped first. */
  queueLimit: z.number().int().min(8).max(10_000).default(200),
  /** Replace the device's key by a new one when it is older than this many days; absent: only when asked (`edgekit identity --rotate`). */
  keyRotationDays: z.number().positive().optional(),
});
export type FleetConfig = z.infer<typeof fleetConfigSchema>;

export const agentConfigSchema = z.strictObject({
  /**
   * Release repository URL (holding metadata/ and targets/). Without `fleet`, the agent installs
   * the newest release of its channel from there and POSTs reports to `${server}/reports`. With
   * `fleet`, it is the repository used when the fleet server names none.
   */
  server: httpUrl.optional(),
  fleet: fleetConfigSchema.optional(),
  channel: z.string().default('stable'),
  /** What this slot runs: the image's name, board and version. */
  name: z.string(),
  board: z.string(),
  version: z.string(),
  /** The root metadata the image trusts (public keys only). */
  trustedRoot: z.string().default('/etc/edgekit/root.json'),
  /** Persistent state: TUF metadata, trusted time, download progress. Survives updates. */
  stateDir: z.string().default('/data/edgekit/update'),
  /** The image's build time (seconds since 1970): the device knows at least this much time has passed. */
  builtAt: z.number().int().nonnegative().optional(),
  /** Boot tries a new slot gets (the board's update.tries). */
  tries: z.number().int().min(1).max(9).default(3),
  /** How the boot chain picks a slot (the board's update.bootchooser): see src/ota/slots/choosers.ts. */
  bootchooser: z.enum(['systemd-boot', 'uboot', 'tryboot']).default('systemd-boot'),
  /** Seconds between checks for a new release. */
  checkInterval: z.number().positive().default(3600),
  /** Bytes one update may download at most (retries count too); none: no limit. */
  dataBudget: z.number().int().positive().optional(),
  download: z
    .strictObject({
      attempts: z.number().int().min(1).default(8),
      /** Backoff doubles from 1 s up to this many seconds between attempts. */
      maxBackoff: z.number().positive().default(60),
      /** A connection that delivers nothing for this long is dropped and resumed. */
      stallTimeout: z.number().positive().default(60),
    })
    .default({ attempts: 8, maxBackoff: 60, stallTimeout: 60 }),
  health: z
    .strictObject({
      /** Process names (as in /proc/<pid>/comm) that must be running. */
      processes: z.array(z.string()).default([]),
      /** A shell command that must exit 0. */
      command: z.string().optional(),
      /** The release server must answer. */
      server: z.boolean().default(false),
      /** Seconds the checks may take to pass after boot before the slot counts as unhealthy. */
      timeout: z.number().positive().default(120),
    })
    .default({ processes: [], server: false, timeout: 120 }),
  /** The agent exits (and init restarts it) when its main loop shows no sign of life for this long. */
  watchdog: z.number().positive().default(600),
});

export type AgentConfig = z.infer<typeof agentConfigSchema>;
export type AgentConfigInput = z.input<typeof agentConfigSchema>;

export function parseAgentConfig(value: unknown, where: string): AgentConfig {
  const r = agentConfigSchema.safeParse(value);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new EdgekitError(`${where}: ${issue.path.join('.') || '(top)'}: ${issue.message}`);
  }
  return r.data;
}

export async function loadAgentConfig(path = AGENT_CONFIG_PATH): Promise<AgentConfig> {
  const text = await readFile(path, 'utf8').catch(() => {
    throw new EdgekitError(`${path}: cannot read the update agent's configuration`);
  });
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new EdgekitError(`${path}: not valid JSON`);
  }
  return parseAgentConfig(json, path);
}
