/**
 * `edgekit serve --tls-cert --tls-key`: HTTPS with a self-signed certificate made by openssl for the
 * test. A device that trusts the certificate works through the agent's protocol module; one that
 * does not is refused by its own TLS check; `edgekit fleet` and the dashboard's files work over
 * HTTPS; bad TLS options are one-line errors.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FleetDeviceClient } from '../src/fleet/protocol/client.js';
import { edgekit } from './helpers/built-images.js';
import { adminToken, startServerProcess, type ServerProcess } from './helpers/fleet-server.js';

const dir = mkdtempSync(join(tmpdir(), 'fleet-tls-'));
const db = join(dir, 'fleet.db');
const certFile = join(dir, 'cert.pem');
const keyFile = join(dir, 'key.pem');
let server: ServerProcess;
let admin: string;
let ca: Buffer;

function selfSigned(cert: string, key: string): void {
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
    '-subj', '/CN=fleet.test', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert,
  ], { stdio: 'pipe' });
}

beforeAll(async () => {
  selfSigned(certFile, keyFile);
  ca = readFileSync(certFile);
  server = await startServerProcess(db, ['--tls-cert', certFile, '--tls-key', keyFile]);
  admin = await adminToken(db);
});
afterAll(async () => {
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** An admin call over HTTPS trusting only the test's certificate. */
function adminCall(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = request(new URL(path, server.url), {
      method, ca, headers: { authorization: `Bearer ${admin}`, ...(data ? { 'content-type': 'application/json' } : {}) },
    }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
    });
    req.on('error', reject);
    req.end(data);
  });
}

function serveFails(args: string[]): { status: number | null; stderr: string } {
  const r = spawnSync('node', ['bin/edgekit.js', 'serve', '--db', join(dir, 'other.db'), '--port', '0', ...args], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stderr: r.stderr };
}

describe('fleet server over HTTPS', () => {
  it('serves devices and operators that trust its certificate', async () => {
    expect(server.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const prov = await adminCall('POST', '/v1/admin/provisioning-tokens', { tags: ['tls'] });
    expect(prov.status).toBe(200);
    const agent = new Agent({ ca, keepAlive: true });
    const device = new FleetDeviceClient({ server: server.url, deviceId: 'tls-1', privateKey: generateKeyPairSync('ed25519').privateKey, provisioningToken: prov.body.token, agent });
    expect(await device.authenticate()).toBe('accepted');
    expect(await device.checkIn({ board: 'qemu-x86_64', version: '1.0.0', slot: 'a' })).toEqual({ release: null });
    expect((await adminCall('GET', '/v1/admin/devices/tls-1')).body).toMatchObject({ id: 'tls-1', version: '1.0.0', tags: ['tls'] });
    agent.destroy();
  });

  it('a client that does not trust the certificate refuses the connection', async () => {
    const device = new FleetDeviceClient({ server: server.url, deviceId: 'tls-2', privateKey: generateKeyPairSync('ed25519').privateKey });
    await expect(device.authenticate()).rejects.toMatchObject({ code: 'DEPTH_ZERO_SELF_SIGNED_CERT' });
  });

  it('edgekit fleet and the dashboard work over HTTPS; the CLI refuses a certificate it does not trust', async () => {
    // An operator's machine that trusts the server's (here self-signed) certificate, as Node is told to.
    const trusted = await edgekit(['fleet', 'devices', 'show', 'tls-1', '--server', server.url, '--token', admin, '--json'], { env: { NODE_EXTRA_CA_CERTS: certFile } });
    expect(trusted.stderr).toBe('');
    expect(JSON.parse(trusted.stdout)).toMatchObject({ id: 'tls-1', version: '1.0.0', reports: [] });
    const untrusted = await edgekit(['fleet', 'devices', 'list', '--server', server.url, '--token', admin]);
    expect(untrusted.code).toBe(1);
    expect(untrusted.stderr).toBe(`edgekit: ${server.url}: cannot reach the fleet server (DEPTH_ZERO_SELF_SIGNED_CERT)\n`);

    const index = await new Promise<{ status: number; type: string; body: string }>((resolve, reject) => {
      request(new URL('/dashboard/', server.url), { ca }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body: text }));
      }).on('error', reject).end();
    });
    expect(index).toMatchObject({ status: 200, type: 'text/html; charset=utf-8', body: expect.stringContaining('src="/dashboard/app.js"') });
  });

  it('bad TLS options are one-line errors and nothing starts', () => {
    const otherCert = join(dir, 'other-cert.pem');
    const otherKey = join(dir, 'other-key.pem');
    selfSigned(otherCert, otherKey);
    writeFileSync(join(dir, 'not-pem'), 'hello\n');
    const cases: Array<[string[], RegExp]> = [
      [['--tls-cert', certFile], /^edgekit: --tls-cert needs --tls-key$/],
      [['--tls-key', keyFile], /^edgekit: --tls-key needs --tls-cert$/],
      [['--tls-cert', join(dir, 'missing.pem'), '--tls-key', keyFile], /^edgekit: --tls-cert .*missing\.pem: cannot read: ENOENT$/],
      [['--tls-cert', join(dir, 'not-pem'), '--tls-key', keyFile], /^edgekit: --tls-cert .*not-pem: not a PEM file/],
      [['--tls-cert', certFile, '--tls-key', otherKey], /^edgekit: TLS certificate or key not usable: .*key values mismatch/],
    ];
    for (const [args, message] of cases) {
      const r = serveFails(args);
      expect(r.status, args.join(' ')).not.toBe(0);
      expect(r.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
      expect(r.stderr.trim(), args.join(' ')).toMatch(message);
    }
    expect(existsSync(join(dir, 'other.db'))).toBe(false);
    expect(existsSync(join(dir, 'other.db.admin-token'))).toBe(false);
  });
});
