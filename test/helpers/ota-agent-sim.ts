/**
 * Runs the real update agent (src/ota/agent) on O3's simulated device: a copy of a built gateway
 * image on a power-cuttable disk, with releases from an O1 repository on a local HTTP server.
 * The agent's configuration follows the booted slot, as on a device where it comes from the slot.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { SimDevice } from '../../src/ota/sim/device.js';
import { simLayoutFromManifest } from '../../src/ota/sim/layout.js';
import { createMetadataClient } from '../../src/ota/repo/index.js';
import { parseAgentConfig, type AgentConfig, type AgentConfigInput } from '../../src/ota/agent/config.js';
import { runAgentOnce, type AgentHost, type AgentOutcome } from '../../src/ota/agent/agent.js';
import { createReporter, type Report } from '../../src/ota/agent/reports.js';
import { httpTargetSource, type TargetSource } from '../../src/ota/agent/target-source.js';
import type { StepDriver } from '../../src/ota/sim/step-driver.js';
import type { SimBootChain } from '../../src/ota/sim/boot-chains.js';
import type { Booted } from '../../src/ota/sim/device.js';
import type { ImageManifest } from '../../src/image/manifest.js';
import type { Slot } from '../../src/ota/slots/bootchooser.js';

export interface SimAgentSetup {
  dev: SimDevice;
  /** Root hash -> version: which release a booted slot runs. */
  versions: Map<string, string>;
  config: (version: string) => AgentConfig;
  reports: Report[];
  log: string[];
}

export async function simAgentDevice(o: {
  image: string;
  manifest: ImageManifest;
  copy: string;
  workingKernels: Set<string>;
  versions: Map<string, string>;
  stateDir: string;
  trustedRoot: string;
  /** The release server; none for a device managed by a fleet server (give `config.fleet`). */
  server?: string;
  config?: Partial<AgentConfigInput>;
  /** The board's boot chain; default systemd-boot. */
  chain?: SimBootChain;
}): Promise<SimAgentSetup> {
  execFileSync('cp', ['--sparse=always', o.image, o.copy]);
  const dev = await SimDevice.open({ image: o.copy, layout: simLayoutFromManifest(o.manifest), seed: 7, tries: 3, workingKernels: o.workingKernels, chain: o.chain });
  const config = (version: string) =>
    parseAgentConfig(
      {
        server: o.server,
        name: o.manifest.name,
        board: o.manifest.board,
        bootchooser: o.manifest.bootchooser,
        version,
        trustedRoot: o.trustedRoot,
        stateDir: o.stateDir,
        download: { attempts: 4, maxBackoff: 0.05, stallTimeout: 5 },
        ...o.config,
      },
      'test config',
    );
  return { dev, versions: o.versions, config, reports: [], log: [] };
}

/** The version the booted slot runs, from its dm-verity root hash on the command line. */
export function bootedVersion(s: SimAgentSetup): { slot: Slot; version: string } {
  const booted = s.dev.booted!;
  const root = /edgekit\.verity=([0-9a-f]+)/.exec(booted.cmdline)![1];
  const version = s.versions.get(root);
  if (!version) throw new Error(`slot ${booted.slot} runs an unknown root ${root}`);
  return { slot: booted.slot, version };
}

/** The reboot the service makes after a pass that asks for one: the bootchooser's last word first. */
export async function serviceReboot(s: SimAgentSetup): Promise<Booted> {
  const chooser = await s.dev.chooser();
  return s.dev.reboot(await chooser.prepareReboot());
}

/** The running simulated device as the agent sees it; `healthy` decides its health checks. */
export async function simHost(s: SimAgentSetup, healthy: (version: string) => boolean = () => true): Promise<AgentHost> {
  const { version } = bootedVersion(s);
  const sim = await s.dev.host();
  return {
    chooser: sim.chooser,
    boot: sim.boot,
    slotDevice: sim.slotDevice,
    health: async () => (healthy(version) ? { ok: true } : { ok: false, reason: `test says ${version} is unhealthy` }),
  };
}

/** One agent pass on the running simulated device. */
export async function agentPass(
  s: SimAgentSetup,
  o: { healthy?: (version: string) => boolean; steps?: StepDriver; source?: (base: TargetSource) => TargetSource; config?: Partial<AgentConfigInput> } = {},
): Promise<AgentOutcome> {
  const { version } = bootedVersion(s);
  const config = { ...s.config(version), ...o.config } as AgentConfig;
  const base = httpTargetSource(config.server!);
  const client = createMetadataClient({
    repoUrl: config.server!,
    trustedRoot: config.trustedRoot,
    stateDir: join(config.stateDir, 'tuf'),
    board: config.board,
    name: config.name,
    channel: config.channel,
    installedVersion: version,
  });
  return runAgentOnce({
    config,
    host: await simHost(s, o.healthy),
    client,
    source: o.source ? o.source(base) : base,
    report: async (r) => {
      s.reports.push(r);
      await createReporter({ log: (l) => s.log.push(l) })(r);
    },
    log: (l) => s.log.push(l),
    steps: o.steps,
    sleep: async () => {},
  });
}
