/**
 * The attacks TUF exists for, played by a malicious HTTP server (node:http on 127.0.0.1) against
 * the device's metadata client, on a repository holding two real gateway releases. Every case
 * must be refused with a reason that names the problem, and leave nothing accepted behind.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { gatewayImages, forge } from './helpers/ota-repo-fixtures.js';
import { startRepoServer, type RepoServer } from './helpers/ota-repo-server.js';
import { createMetadataClient, initRepo, publishRelease, type MetadataClientOptions, type UpdateInfo } from '../src/ota/repo/index.js';
import { loadPrivateKey } from '../src/sign/keys.js';

const T0 = Date.parse('2030-01-01T00:00:00Z');
const at = (hours: number) => new Date(T0 + hours * 3600_000);
/** Release 2's timestamp is signed at hour 2 and valid for one day. */
const TS_EXPIRES_HOURS = 26;

let work: string;
let repo: string;
let keys: string;
let server: RepoServer;
/** Metadata files as they were after release 1 (an attacker kept copies). */
let old: Record<string, Buffer>;

function device(hours: number, extra: Partial<MetadataClientOptions> = {}) {
  const stateDir = extra.stateDir ?? mkdtempSync(join(work, 'device-'));
  const client = createMetadataClient({ repoUrl: server.url, trustedRoot: join(repo, 'metadata', '1.root.json'), stateDir, board: 'qemu-x86_64', clock: () => at(hours), ...extra });
  return { client, stateDir };
}

/** The timestamp version a device has accepted (undefined: none). */
function acceptedTimestamp(stateDir: string): number | undefined {
  const f = join(stateDir, 'metadata', 'timestamp.json');
  return existsSync(f) ? JSON.parse(readFileSync(f, 'utf8')).signed.version : undefined;
}

const meta = (file: string) => readFileSync(join(repo, 'metadata', file));
const servedPath = (t: { path: string; sha256: string }) => {
  const slash = t.path.lastIndexOf('/');
  return `/targets/${t.path.slice(0, slash)}/${t.sha256}.${t.path.slice(slash + 1)}`;
};

async function drain(stream: NodeJS.ReadableStream): Promise<number> {
  let n = 0;
  for await (const chunk of stream) n += (chunk as Buffer).length;
  return n;
}

beforeAll(async () => {
  const { v1, v2 } = await gatewayImages();
  work = mkdtempSync(join(tmpdir(), 'edgekit-ota-sec-'));
  repo = join(work, 'repo');
  keys = join(work, 'keys');
  await initRepo({ repo, keys, roles: { root: { keys: 3, threshold: 2 } }, now: at(0) });
  await publishRelease({ image: v1.image, repo, version: '1.0', keys, now: at(1) });
  old = { timestamp: meta('timestamp.json'), snapshot: meta('2.snapshot.json'), targets: meta('2.targets.json') };
  await publishRelease({ image: v2.image, repo, version: '1.1', keys, now: at(2) });
  server = await startRepoServer(repo);
});

afterEach(() => {
  if (server) server.override = () => undefined;
});

afterAll(async () => {
  await server?.close();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('an honest server (the control case)', () => {
  it('serves release 1.1, over HTTP and from a folder', async () => {
    const { client, stateDir } = device(3);
    expect((await client.refresh())!.version).toBe('1.1');
    expect(acceptedTimestamp(stateDir)).toBe(3);
    const local = createMetadataClient({ repoDir: repo, trustedRoot: join(repo, 'metadata', '1.root.json'), stateDir: mkdtempSync(join(work, 'dir-')), board: 'qemu-x86_64', clock: () => at(3) });
    expect((await local.refresh())!.version).toBe('1.1');
  });
});

describe('tampered data', () => {
  let info: UpdateInfo;
  let client: ReturnType<typeof device>['client'];

  beforeAll(async () => {
    ({ client } = device(3));
    info = (await client.refresh())!;
  });

  it('refuses a tampered payload (same length, one byte changed)', async () => {
    const target = info.rootPayload!;
    server.override = (path, real) => {
      if (path !== servedPath(target) || !real) return undefined;
      const bad = Buffer.from(real);
      bad[4096] ^= 0x01;
      return bad;
    };
    const file = join(work, 'tampered.squashfs');
    await expect(client.download(target, file)).rejects.toThrow(/refused: length or hash mismatch/);
    expect(existsSync(file)).toBe(false);
    await expect(drain(await client.open(target))).rejects.toThrow(/refused: sha256 .* does not match the signed/);
  });

  it('refuses tampered targets metadata (a signed length changed, signature kept)', async () => {
    const { client: fresh, stateDir } = device(3);
    server.override = (path) =>
      path === '/metadata/3.targets.json'
        ? forge(meta('3.targets.json'), (s) => {
            for (const t of Object.values<any>(s.targets)) t.length += 1;
          })
        : undefined;
    await expect(fresh.refresh()).rejects.toThrow(/update metadata refused: length or hash mismatch/);
    expect(existsSync(join(stateDir, 'metadata', 'targets.json'))).toBe(false);
  });

  it('refuses a tampered timestamp (expiry pushed out, signature kept)', async () => {
    const { client: fresh, stateDir } = device(3);
    server.override = (path) => (path === '/metadata/timestamp.json' ? forge(meta('timestamp.json'), (s) => (s.expires = '2099-01-01T00:00:00Z')) : undefined);
    await expect(fresh.refresh()).rejects.toThrow(/refused: signature threshold not met: timestamp was signed by 0\/1 keys/);
    expect(acceptedTimestamp(stateDir)).toBeUndefined();
  });
});

describe('keys', () => {
  it('refuses metadata signed with a key the root does not trust', async () => {
    const { client, stateDir } = device(3);
    const attacker = generateKeyPairSync('ed25519').privateKey;
    server.override = (path) =>
      path === '/metadata/timestamp.json'
        ? forge(meta('timestamp.json'), (s) => ((s.version += 10), (s.expires = '2099-01-01T00:00:00Z')), [attacker])
        : undefined;
    await expect(client.refresh()).rejects.toThrow(/signature threshold not met: timestamp was signed by 0\/1 keys/);
    expect(acceptedTimestamp(stateDir)).toBeUndefined();
  });

  it('refuses a new root signed by fewer root keys than the threshold (1 of 2)', async () => {
    const { client, stateDir } = device(3);
    const rootKey = await loadPrivateKey(join(keys, 'root-1.key'));
    const attacker = generateKeyPairSync('ed25519');
    server.override = (path) => {
      if (path !== '/metadata/2.root.json') return undefined;
      // A root 2 that hands the timestamp role to the attacker, signed by one stolen root key.
      return forge(meta('1.root.json'), (s) => {
        s.version = 2;
        const raw = Buffer.from(attacker.publicKey.export({ format: 'jwk' }).x as string, 'base64url').toString('hex');
        s.keys.attacker = { keytype: 'ed25519', scheme: 'ed25519', keyval: { public: raw } };
        s.roles.timestamp = { keyids: ['attacker'], threshold: 1 };
      }, [rootKey]);
    };
    await expect(client.refresh()).rejects.toThrow(/signature threshold not met: root was signed by 1\/2 keys/);
    expect(JSON.parse(readFileSync(join(stateDir, 'metadata', 'root.json'), 'utf8')).signed.version).toBe(1);
    expect(acceptedTimestamp(stateDir)).toBeUndefined();
  });
});

describe('time and versions', () => {
  it('refuses an expired timestamp', async () => {
    const { client, stateDir } = device(TS_EXPIRES_HOURS + 1);
    await expect(client.refresh()).rejects.toThrow(/refused: expired metadata .*timestamp\.json is expired/);
    expect(acceptedTimestamp(stateDir)).toBeUndefined();
  });

  it('refuses a rollback to older metadata (release 1 served again)', async () => {
    const { client, stateDir } = device(3);
    await client.refresh();
    server.override = (path) => (path === '/metadata/timestamp.json' ? old.timestamp : undefined);
    await expect(client.refresh()).rejects.toThrow(/refused: version rollback or mix-and-match: New timestamp version 2 is less than current version 3/);
    expect(acceptedTimestamp(stateDir)).toBe(3);
  });

  it('refuses a frozen server past expiry, and keeps refusing when the device clock goes backwards', async () => {
    let clock = at(3);
    const { client, stateDir } = device(0, { clock: () => clock });
    expect((await client.refresh())!.version).toBe('1.1');
    // The server keeps serving the same (frozen) metadata; a day later it has expired.
    clock = at(TS_EXPIRES_HOURS + 4);
    await expect(client.refresh()).rejects.toThrow(/expired metadata/);
    // Reboot without an RTC: the clock is back at hour 4. The device's trusted time is not.
    clock = at(4);
    await expect(client.refresh()).rejects.toThrow(/expired metadata/);
    expect((await client.trustedTime()).getTime()).toBeGreaterThanOrEqual(at(TS_EXPIRES_HOURS).getTime());
    expect(acceptedTimestamp(stateDir)).toBe(3);
    // A device that never saw a later time accepts the same metadata at hour 4: the refusal
    // above comes from the trusted time alone.
    expect((await device(4).client.refresh())!.version).toBe('1.1');
  });

  it('takes the timestamp\'s signed time as trusted time on a board whose clock says 1970', async () => {
    const { client } = device(0, { clock: () => new Date(0) });
    const info = await client.refresh();
    expect(info!.version).toBe('1.1');
    expect((await client.trustedTime()).toISOString()).toBe(at(2).toISOString());
    // ... and refuses metadata older than a time the image itself guarantees (its build time).
    const built = device(0, { clock: () => new Date(0), minimumTime: at(TS_EXPIRES_HOURS + 1) });
    await expect(built.client.refresh()).rejects.toThrow(/expired metadata/);
  });
});

describe('mix-and-match', () => {
  it('refuses release 1\'s snapshot under release 2\'s timestamp', async () => {
    const { client, stateDir } = device(3);
    server.override = (path) => (path === '/metadata/3.snapshot.json' ? old.snapshot : undefined);
    await expect(client.refresh()).rejects.toThrow(/refused: length or hash mismatch .*Unable to load snapshot metadata/);
    expect(existsSync(join(stateDir, 'metadata', 'snapshot.json'))).toBe(false);
  });

  it('refuses release 1\'s targets under release 2\'s snapshot', async () => {
    const { client, stateDir } = device(3);
    server.override = (path) => (path === '/metadata/3.targets.json' ? old.targets : undefined);
    await expect(client.refresh()).rejects.toThrow(/refused: length or hash mismatch .*Unable to load targets/);
    expect(existsSync(join(stateDir, 'metadata', 'targets.json'))).toBe(false);
  });
});

describe('endless data', () => {
  it('stops reading a timestamp at its size limit', async () => {
    const { client, stateDir } = device(3);
    server.override = (path) => (path === '/metadata/timestamp.json' ? 'endless' : undefined);
    await expect(client.refresh()).rejects.toThrow(/refused: endless data/);
    expect(acceptedTimestamp(stateDir)).toBeUndefined();
  });

  it('stops reading a snapshot at the length the timestamp signs', async () => {
    const { client } = device(3);
    server.override = (path) => (path === '/metadata/3.snapshot.json' ? 'endless' : undefined);
    await expect(client.refresh()).rejects.toThrow(/refused: endless data/);
  });

  it('stops downloading a target at the length targets metadata signs', async () => {
    const { client } = device(3);
    const info = (await client.refresh())!;
    server.override = (path) => (path === servedPath(info.kernel) ? 'endless' : undefined);
    const file = join(work, 'endless-kernel');
    await expect(client.download(info.kernel, file)).rejects.toThrow(/refused: endless data/);
    expect(existsSync(file)).toBe(false);
    const stream = await client.open(info.kernel);
    await expect(drain(stream)).rejects.toThrow(new RegExp(`more than the ${info.kernel.length} bytes the metadata allows`));
  });
});

// Copies kept for debugging a failure: EDGEKIT_KEEP_TEST_DIR keeps the repository.
afterAll(() => {
  if (process.env.EDGEKIT_KEEP_TEST_DIR && work) cpSync(repo, join(process.env.EDGEKIT_TEST_DIR ?? tmpdir(), 'ota-security-repo'), { recursive: true });
});
