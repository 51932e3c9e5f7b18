/**
 * Page-aligned buffers for O_DIRECT. Node's Buffers come from malloc, whose large blocks start 16
 * bytes into a page, and O_DIRECT refuses (EINVAL) memory that is not aligned to the device's
 * logical block. A WebAssembly.Memory is one mapping that starts on a page boundary (its pages are
 * 64 KiB), so slices of it at multiples of 4 KiB are aligned for any disk. A shared one is a
 * SharedArrayBuffer, which the hashing workers (src/flash/hash-pool.ts) read without a copy.
 */
const WASM_PAGE = 64 * 1024;
export const DIRECT_ALIGN = 4096;

/** `count` buffers of `size` bytes (a multiple of 4 KiB), each page-aligned; all zeros. */
export function alignedBuffers(count: number, size: number, opts: { shared?: boolean } = {}): Buffer[] {
  if (size % DIRECT_ALIGN !== 0) throw new Error(`aligned buffer size ${size} is not a multiple of ${DIRECT_ALIGN}`);
  const pages = Math.ceil((count * size) / WASM_PAGE);
  const memory = new WebAssembly.Memory({ initial: pages, ...(opts.shared ? { maximum: pages, shared: true } : {}) });
  return Array.from({ length: count }, (_, i) => Buffer.from(memory.buffer, i * size, size));
}

export const alignUp = (n: number, to = DIRECT_ALIGN) => Math.ceil(n / to) * to;
export const alignDown = (n: number, to = DIRECT_ALIGN) => Math.floor(n / to) * to;
