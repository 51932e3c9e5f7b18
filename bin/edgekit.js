#!/usr/bin/env node
// Checked before anything else loads: older Node fails later with obscure syntax or API errors.
const major = Number(process.versions.node.split('.')[0]);
if (major < 20) {
  process.stderr.write(`edgekit: Node.js >= 20 is required (this is ${process.version})\n`);
  process.exit(1);
}
// No V8 compile cache (module.enableCompileCache, Node >= 22.1): measured on `edgekit flash`, it
// saved about 2 ms of 58 ms of start-up CPU, not worth a cache folder written on every host.
const { main } = await import('../dist/cli/main.js');
await main(process.argv);
