#!/usr/bin/env node
// Checked before anything else loads: older Node fails later with obscure syntax or API errors.
const major = Number(process.versions.node.split('.')[0]);
if (major < 20) {
  process.stderr.write(`edgekit: Node.js >= 20 is required (this is ${process.version})\n`);
  process.exit(1);
}
const { main } = await import('../dist/cli/main.js');
await main(process.argv);
