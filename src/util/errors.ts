/**
 * An error a user can act on: its message is one line that names what is wrong and where
 * (file:line, device, URL). The CLI prints `edgekit: <message>` and exits non-zero; anything
 * that is not an EdgekitError is a bug and gets a stack trace.
 */
export class EdgekitError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
    this.name = 'EdgekitError';
  }
}

export function fail(message: string): never {
  throw new EdgekitError(message);
}
