/**
 * The ceiling for bench/fleet: a minimal node:http server that reads each request body and answers
 * a fixed JSON body per device path (no auth, no validation, no storage). The same load generator
 * against it shows what node:http and the load generator manage on this machine right now, so the
 * fleet server's figures can be read as a share of that.
 * Run as a process of its own: node static-json-server.mjs; prints "listening on http://..." once.
 */
import { createServer } from 'node:http';

const BODIES = {
  '/v1/device/hello': { nonce: 'static-nonce' },
  // Shaped like a real device token so the protocol client holds it and sends it on.
  '/v1/device/auth': { status: 'accepted', token: 'dev.c3RhdGlj.9999999999.c3RhdGlj', expiresIn: 900 },
  '/v1/device/check-in': { release: null },
};
const encoded = Object.fromEntries(Object.entries(BODIES).map(([p, b]) => [p, Buffer.from(`${JSON.stringify(b)}\n`)]));
const notFound = Buffer.from('{"error":"no such endpoint"}\n');

const server = createServer((req, res) => {
  req.on('data', () => {});
  req.on('end', () => {
    const body = encoded[req.url] ?? notFound;
    res.writeHead(encoded[req.url] ? 200 : 404, { 'content-type': 'application/json', 'content-length': body.length });
    res.end(body);
  });
});
server.keepAliveTimeout = 30_000;
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  process.stdout.write(`listening on http://127.0.0.1:${port}\n`);
});
process.once('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});
