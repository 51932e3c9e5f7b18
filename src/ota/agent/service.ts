/**
 * The agent as a device service: builds the pieces from the configuration, runs a pass, reboots
 * when the pass says so, else sleeps until the next check. A watchdog ends the process when no
 * progress shows for `watchdog` seconds (a hung download, a wedged device): busybox init
 * restarts it and the next pass resumes from the state on /data.
 */
import { execFile } from 'node:child_process';
import { createMetadataClient, type MetadataClient } from '../repo/index.js';
import { runAgentOnce, type AgentHost, type AgentOutcome } from './agent.js';
import type { AgentConfig } from './config.js';
import { openDeviceHost, type DeviceHostOptions } from './device-host.js';
import { FleetLink } from './fleet-link.js';
import { createReporter, type Reporter } from './reports.js';
import { dirTargetSource, httpTargetSource, type TargetSource } from './target-source.js';
import { EdgekitError } from '../../util/errors.js';
import { join } from 'node:path';

export interface PassOptions {
  config: AgentConfig;
  /** Read releases from this repository folder instead of the server (offline update). */
  fromDir?: string;
  log: (line: string) => void;
  host?: AgentHost & { close?(): Promise<void> };
  /** Where the device's partitions and command line come from when `host` is not given. */
  device?: DeviceHostOptions;
  alive?: () => void;
  /** Receives what the reboot must pass the kernel ("0 tryboot"; undefined: nothing) when the pass asks for a reboot. */
  onReboot?: (argument: string | undefined) => void;
  /** With a fleet server configured: the link (one per service, so its backoff carries over); made here when not given. */
  fleet?: FleetLink;
}

export function metadataClientFor(config: AgentConfig, fromDir?: string): MetadataClient {
  const where = fromDir ? { repoDir: fromDir } : { repoUrl: serverOf(config) };
  return createMetadataClient({
    ...where,
    trustedRoot: config.trustedRoot,
    stateDir: join(config.stateDir, 'tuf'),
    board: config.board,
    name: config.name,
    channel: config.channel,
    installedVersion: config.version,
    minimumTime: config.builtAt !== undefined ? new Date(config.builtAt * 1000) : undefined,
  });
}

function serverOf(config: AgentConfig): string {
  if (!config.server) throw new EdgekitError('the update configuration names no server (image spec update.server), and no --from folder was given');
  return config.server;
}

export async function runPass(o: PassOptions): Promise<AgentOutcome> {
  const link = o.config.fleet ? (o.fleet ?? (await FleetLink.open(o.config, o.log))) : undefined;
  const host = o.host ?? (await openDeviceHost(o.config, o.device));
  try {
    let client: MetadataClient;
    let source: TargetSource;
    let report: Reporter;
    if (o.fromDir) {
      // Offline: the folder's releases; a fleet-managed device queues its reports for the next check-in.
      client = metadataClientFor(o.config, o.fromDir);
      source = dirTargetSource(o.fromDir);
      report = link ? link.reporter({ queueOnly: true }) : createReporter({ log: o.log });
    } else if (link) {
      client = link.metadataClient(host.chooser);
      source = link.targetSource();
      report = link.reporter();
    } else {
      client = metadataClientFor(o.config);
      source = httpTargetSource(serverOf(o.config));
      report = createReporter({ server: o.config.server, log: o.log });
    }
    const outcome = await runAgentOnce({ config: o.config, host, client, source, report, log: o.log, alive: o.alive });
    if (outcome === 'reboot') {
      // The boot chain's last word before the reboot: tryboot spends a trial try and needs its flag set.
      const argument = await host.chooser.prepareReboot();
      if (argument) o.log(`edgekit-agent: the reboot must pass "${argument}" (${host.chooser.kind})`);
      o.onReboot?.(argument);
    }
    return outcome;
  } finally {
    await host.close?.();
  }
}

export function startWatchdog(seconds: number, log: (line: string) => void): { kick(): void; stop(): void } {
  let last = performance.now();
  const timer = setInterval(() => {
    if (performance.now() - last > seconds * 1000) {
      log(`edgekit-agent: no progress for ${seconds} s: exiting so init restarts the agent`);
      process.exit(70);
    }
  }, Math.min(5000, seconds * 250));
  timer.unref();
  return { kick: () => (last = performance.now()), stop: () => clearInterval(timer) };
}

/** Reboots; `argument` goes to the kernel's restart command (reboot(2) RESTART2), e.g. "0 tryboot". */
export function rebootDevice(log: (line: string) => void, argument?: string): Promise<void> {
  log(`edgekit-agent: rebooting${argument ? ` with "${argument}"` : ''}`);
  return new Promise((resolve) => {
    execFile('/usr/sbin/reboot', argument ? [argument] : [], () => resolve());
  });
}

/** The service's main loop; it returns only when the device reboots. */
export async function runService(config: AgentConfig, log: (line: string) => void): Promise<void> {
  const dog = startWatchdog(config.watchdog, log);
  const fleet = config.fleet ? await FleetLink.open(config, log) : undefined;
  if (fleet) log(`edgekit-agent: device ${fleet.deviceId} (id from ${fleet.identity.idSource === 'config' ? 'the config partition' : 'its key'}), managed by ${config.fleet!.server}`);
  for (;;) {
    dog.kick();
    let outcome: AgentOutcome;
    let rebootArgument: string | undefined;
    try {
      outcome = await runPass({ config, log, alive: dog.kick, onReboot: (a) => (rebootArgument = a), fleet });
    } catch (err) {
      // Not a reason to stop the service: report on the console and try again at the next check.
      log(`edgekit-agent: ${err instanceof Error ? err.message : String(err)}`);
      outcome = 'failed';
    }
    if (outcome === 'reboot') {
      dog.stop();
      await rebootDevice(log, rebootArgument);
      // init is taking the system down; wait for it.
      await new Promise(() => {});
    }
    // A failure is retried sooner than the next regular check, but not in a tight loop.
    const wait = fleet ? fleet.nextWait(outcome) : outcome === 'failed' ? Math.min(config.checkInterval, 60) : config.checkInterval;
    await sleepKicking(wait * 1000, dog.kick);
  }
}

async function sleepKicking(ms: number, kick: () => void): Promise<void> {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    kick();
    await new Promise((r) => setTimeout(r, Math.min(10_000, end - performance.now())));
  }
}
