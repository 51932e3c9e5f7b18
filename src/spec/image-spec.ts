/**
 * The user's image spec: what goes in an image, in the spirit of LinuxKit's small yml. Everything
 * not named here stays out.
 */
import { z } from 'zod';
import { loadYamlFile, type Loaded } from './load.js';

const fileSchema = z
  .strictObject({
    path: z.string().regex(/^\//, 'an absolute path in the image'),
    content: z.string().optional(),
    /** A file beside the spec (relative to the spec's folder). */
    source: z.string().optional(),
    mode: z.union([z.number().int(), z.string().regex(/^0?[0-7]{3,4}$/)]).default(0o644),
  })
  .refine((f) => (f.content === undefined) !== (f.source === undefined), { message: 'give exactly one of content or source' });

const serviceSchema = z.strictObject({
  name: z.string().regex(/^[a-z0-9][a-z0-9-_]*$/),
  /** Run in the foreground and supervised: restarted when it exits. */
  command: z.string(),
  user: z.string().optional(),
});

export const imageSpecSchema = z.strictObject({
  name: z.string().regex(/^[a-z0-9][a-z0-9-_.]*$/),
  version: z.union([z.string(), z.number()]).transform(String),
  description: z.string().optional(),
  debian: z
    .strictObject({
      suite: z.string().default('trixie'),
      /** Another Debian mirror; by default the host's Debian apt source. */
      mirror: z.url().optional(),
      securityMirror: z.url().optional(),
      components: z.array(z.string()).default(['main', 'non-free-firmware']),
      /** A folder of .debs (relative to the spec) used instead of, or before, the archive. */
      debs: z.string().optional(),
    })
    .default({ suite: 'trixie', components: ['main', 'non-free-firmware'] }),
  /** ram: the root is an initramfs in the boot slot. disk: a read-only root slot verified by dm-verity. */
  root: z.enum(['ram', 'disk']).default('ram'),
  /**
   * How a disk root's squashfs blocks are compressed. lz4 (edgekit's deterministic encoder): OTA
   * deltas can rebuild it on the device. gzip: about 25% smaller, but deltas only apply where the
   * device's zlib is the builder's. none: biggest slots, cheapest deltas. See docs/deltas.md.
   */
  rootCompression: z.enum(['lz4', 'gzip', 'none']).default('lz4'),
  /** Kernel entry to use instead of the board's. */
  kernel: z.string().optional(),
  packages: z.array(z.string()).default([]),
  overlays: z.array(z.string()).default([]),
  files: z.array(fileSchema).default([]),
  hostname: z.string().regex(/^[a-zA-Z0-9-]{1,63}$/).default('edgekit'),
  users: z
    .array(
      z.strictObject({
        name: z.string().regex(/^[a-z_][a-z0-9_-]*$/),
        uid: z.number().int().min(0).optional(),
        shell: z.string().default('/bin/sh'),
        authorizedKeys: z.array(z.string().regex(/^(ssh-|ecdsa-|sk-)/, 'an OpenSSH public key line')).default([]),
      }),
    )
    .default([]),
  network: z
    .strictObject({
      dhcp: z.array(z.string()).default([]),
    })
    .default({ dhcp: [] }),
  services: z.array(serviceSchema).default([]),
  /** Printed on the console when the system is up: tests and `edgekit run --expect` wait for it. */
  marker: z.string().default('edgekit: system ready'),
  cmdline: z.array(z.string()).default([]),
  /** The update agent (overlays/ota-agent): see docs/updates-agent.md. */
  update: z
    .strictObject({
      /** The release repository (metadata/, targets/): the agent installs the newest release of its channel from there. */
      server: z.string().optional(),
      /** A fleet server (`edgekit serve`) manages the device: it says which release to install and where the repository is. */
      fleet: z
        .strictObject({
          server: z.string().regex(/^https?:\/\/[^/]/, 'an http:// or https:// URL'),
          /** Replace the device's key by a new one when it is older than this many days. */
          keyRotationDays: z.number().positive().optional(),
        })
        .optional(),
      channel: z.string().default('stable'),
      /** The release repository's metadata/root.json (relative to the spec): the keys the image trusts. */
      root: z.string().optional(),
      health: z
        .strictObject({
          processes: z.array(z.string()).optional(),
          command: z.string().optional(),
          server: z.boolean().optional(),
          timeout: z.number().positive().optional(),
        })
        .optional(),
      /** Bytes an update may download at most. */
      dataBudget: z.number().int().positive().optional(),
      /** Seconds between checks for an update. */
      checkInterval: z.number().int().positive().optional(),
    })
    .optional(),
});

export type ImageSpec = z.infer<typeof imageSpecSchema>;

export function loadImageSpec(file: string): Loaded<ImageSpec> {
  return loadYamlFile(file, imageSpecSchema);
}
