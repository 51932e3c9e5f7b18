/**
 * The serial console of a running guest as text: raw chunks for echoing, and a cleaned copy
 * (terminal escape sequences and carriage returns removed) that markers are matched against,
 * so a pattern like /\[  OK  \] Reached target/ matches whatever colours the guest paints.
 */
import { EventEmitter } from 'node:events';
import { StringDecoder } from 'node:string_decoder';

/** CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and two-byte escapes (ESC x; x is not '[' or ']', which open the others). */
const COMPLETE_ESCAPE = /\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -/]*[0-Z\\^-~])/g;
const COMPLETE_ESCAPE_AT_START = new RegExp(`^(?:${COMPLETE_ESCAPE.source})`);
/** An escape sequence longer than this is garbage, not a sequence still arriving. */
const MAX_ESCAPE_LENGTH = 256;
/** How much cleaned text is kept; older text is dropped, positions stay absolute. */
const RETAIN_CHARS = 4 * 1024 * 1024;

export interface ConsoleOutputEvents {
  data: [chunk: string];
  end: [];
}

export class ConsoleOutput extends EventEmitter<ConsoleOutputEvents> implements AsyncIterable<string> {
  private readonly decoder = new StringDecoder('utf8');
  private pendingEscape = '';
  private cleaned = '';
  /** Absolute position (in cleaned characters) of `cleaned[0]`. */
  private dropped = 0;
  private ended = false;

  /** Cleaned console text still retained (the last 4 MiB at most). */
  get text(): string {
    return this.cleaned;
  }

  /** Absolute position just after the last cleaned character received. */
  get end(): number {
    return this.dropped + this.cleaned.length;
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /** The last `lines` lines of cleaned text, for error messages. */
  tail(lines = 20): string {
    const all = this.cleaned.replace(/\n+$/, '').split('\n');
    return all.slice(-lines).join('\n');
  }

  /** Feeds bytes read from the console. */
  push(bytes: Buffer): void {
    this.accept(this.decoder.write(bytes));
  }

  /** No more bytes will come (QEMU exited). */
  finish(): void {
    if (this.ended) return;
    this.accept(this.decoder.end());
    if (this.pendingEscape) {
      this.append(this.pendingEscape.replace(COMPLETE_ESCAPE, '').replace(/\r/g, ''));
      this.pendingEscape = '';
    }
    this.ended = true;
    this.emit('end');
  }

  /**
   * First match of `re` in cleaned text at absolute position >= `from`, with the absolute end of the match.
   * Text already dropped from the retained window cannot match.
   */
  search(re: RegExp, from: number): { text: string; end: number } | undefined {
    const start = Math.max(0, from - this.dropped);
    const m = nonGlobal(re).exec(this.cleaned.slice(start));
    if (!m) return undefined;
    return { text: m[0], end: this.dropped + start + m.index + m[0].length };
  }

  /**
   * Waits for `re` in the text after `from`: resolves with the match, or rejects with `fail(why)`
   * when `timeoutMs` passes or the output ends (`ended` says why; it may wait for an exit status).
   */
  waitForMatch(
    re: RegExp,
    from: number,
    timeoutMs: number,
    fail: (why: string) => Error,
    ended: () => string | Promise<string>,
  ): Promise<{ text: string; end: number }> {
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const cleanup = () => {
        clearTimeout(timer);
        this.off('data', check);
        this.off('end', onEnd);
      };
      const check = () => {
        const hit = this.search(re, from);
        if (!hit) return false;
        cleanup();
        resolve(hit);
        return true;
      };
      const onEnd = () => {
        // 'end' follows the last 'data', so a match in the final output has been checked already.
        void Promise.resolve(ended()).then((why) => {
          cleanup();
          reject(fail(why));
        });
      };
      if (check()) return;
      if (this.ended) return onEnd();
      this.on('data', check);
      this.on('end', onEnd);
      timer = setTimeout(() => {
        cleanup();
        reject(fail(`timed out after ${timeoutMs / 1000} s`));
      }, timeoutMs);
    });
  }

  /** Raw chunks from now until QEMU exits. */
  async *[Symbol.asyncIterator](): AsyncIterator<string> {
    const queue: string[] = [];
    let wake: (() => void) | undefined;
    const onData = (c: string) => {
      queue.push(c);
      wake?.();
    };
    const onEnd = () => wake?.();
    this.on('data', onData);
    this.on('end', onEnd);
    try {
      for (;;) {
        while (queue.length > 0) yield queue.shift()!;
        if (this.ended) return;
        await new Promise<void>((r) => (wake = r));
        wake = undefined;
      }
    } finally {
      this.off('data', onData);
      this.off('end', onEnd);
    }
  }

  private accept(chunk: string): void {
    if (chunk === '') return;
    let s = this.pendingEscape + chunk;
    this.pendingEscape = '';
    // A sequence cut by the chunk boundary is held back until its end arrives.
    const lastEsc = s.lastIndexOf('\x1b');
    if (lastEsc >= 0 && s.length - lastEsc < MAX_ESCAPE_LENGTH && !COMPLETE_ESCAPE_AT_START.test(s.slice(lastEsc))) {
      this.pendingEscape = s.slice(lastEsc);
      s = s.slice(0, lastEsc);
    }
    this.append(s.replace(COMPLETE_ESCAPE, '').replace(/\r/g, ''));
    // Emitted after the cleaned text is updated: listeners (waitFor) search it.
    this.emit('data', chunk);
  }

  private append(text: string): void {
    this.cleaned += text;
    if (this.cleaned.length > RETAIN_CHARS) {
      const cut = this.cleaned.length - RETAIN_CHARS;
      this.cleaned = this.cleaned.slice(cut);
      this.dropped += cut;
    }
  }
}

/** A copy of `re` without g/y: exec on a fresh slice must not depend on a stale lastIndex. */
function nonGlobal(re: RegExp): RegExp {
  return new RegExp(re.source, re.flags.replace(/[gy]/g, ''));
}
