/**
 * A small Debian archive for tests: real .debs laid out in a pool, a Packages index made by
 * dpkg-scanpackages (Debian's own tool), a Release listing its sha256, clearsigned with a key the
 * test generates, served over HTTP on 127.0.0.1 by node:http.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { basename, join, normalize } from 'node:path';
import * as openpgp from 'openpgp';

export interface ServedDir {
  url: string;
  close(): Promise<void>;
  /** Paths requested so far, to prove a warm build asked for nothing. */
  requests: string[];
}

/** Serves `root` read-only on 127.0.0.1 at a free port. */
export async function serveDir(root: string): Promise<ServedDir> {
  const requests: string[] = [];
  const server: Server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    requests.push(path);
    const file = join(root, normalize(path).replace(/^(\.\.[/\\])+/, ''));
    if (!existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404).end();
      return;
    }
    const data = readFileSync(file);
    res.writeHead(200, { 'content-length': data.length }).end(data);
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/debian`,
    requests,
    close: () =>
      new Promise<void>((ok) => {
        server.closeAllConnections();
        server.close(() => ok());
      }),
  };
}

/** A port that was just free and has nothing listening on it now. */
export async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((ok) => s.listen(0, '127.0.0.1', ok));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((ok) => s.close(() => ok()));
  return port;
}

export async function generateSigningKey(name: string): Promise<{ privateKey: openpgp.PrivateKey; publicKey: openpgp.PublicKey }> {
  const { privateKey } = await openpgp.generateKey({
    type: 'ecc',
    curve: 'ed25519Legacy',
    userIDs: [{ name }],
    format: 'object',
  });
  return { privateKey, publicKey: privateKey.toPublic() };
}

export interface ArchiveLayout {
  root: string; // served directory; the archive is at root/debian
  suite: string;
  arch: string;
  debs: string[];
  key: openpgp.PrivateKey;
  date?: Date;
  validUntil?: Date;
}

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** Writes pool/, Packages(.xz) and a signed InRelease under root/debian. Returns the archive dir. */
export async function writeArchive(l: ArchiveLayout): Promise<string> {
  const top = join(l.root, 'debian');
  const pool = join(top, 'pool', 'main');
  mkdirSync(pool, { recursive: true });
  for (const deb of l.debs) copyFileSync(deb, join(pool, basename(deb)));
  const rel = `main/binary-${l.arch}`;
  const dir = join(top, 'dists', l.suite, rel);
  mkdirSync(dir, { recursive: true });
  const packages = execFileSync('dpkg-scanpackages', ['--multiversion', 'pool', '/dev/null'], { cwd: top, stdio: ['ignore', 'pipe', 'ignore'] });
  writeFileSync(join(dir, 'Packages'), packages);
  writeFileSync(join(dir, 'Packages.xz'), execFileSync('xz', ['-c', '-9'], { input: packages }));
  await signRelease(l);
  return top;
}

/** (Re)writes the suite's InRelease from the index files present now, signed by `key`. */
export async function signRelease(l: ArchiveLayout, key = l.key): Promise<void> {
  const dists = join(l.root, 'debian', 'dists', l.suite);
  const files = ['Packages', 'Packages.xz'].map((n) => `main/binary-${l.arch}/${n}`);
  const date = l.date ?? new Date();
  const lines = [
    'Origin: EdgekitTest',
    `Suite: ${l.suite}`,
    `Codename: ${l.suite}`,
    `Date: ${date.toUTCString()}`,
    ...(l.validUntil ? [`Valid-Until: ${l.validUntil.toUTCString()}`] : []),
    `Architectures: ${l.arch}`,
    'Components: main',
    'SHA256:',
    ...files.map((f) => {
      const data = readFileSync(join(dists, f));
      return ` ${sha256(data)} ${data.length} ${f}`;
    }),
  ];
  const message = await openpgp.createCleartextMessage({ text: lines.join('\n') + '\n' });
  writeFileSync(join(dists, 'InRelease'), await openpgp.sign({ message, signingKeys: key }));
}
