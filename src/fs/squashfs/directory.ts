/**
 * Directory listings for the squashfs directory table. A listing is a run of headers, each
 * followed by up to 256 entries that share one inode metadata block and whose inode numbers lie
 * within ±32767 of the header's. We also open a new header whenever the listing crosses into a
 * new directory-table metadata block, and index those headers: the kernel's lookup jumps to the
 * last indexed header whose first name sorts at or before the wanted one, then scans forward.
 */
import type { DirIndexEntry } from './layout.js';
import type { MetadataWriter, MetadataPosition } from './metadata.js';
import { METADATA_SIZE } from './layout.js';

export interface ListingEntry {
  /** Name bytes; entries must come sorted by these bytes. */
  name: Buffer;
  /** Basic inode type (1..7). */
  type: number;
  inodeNumber: number;
  inode: MetadataPosition;
}

export interface WrittenListing {
  /** Where the listing starts in the directory table. */
  start: MetadataPosition;
  /** Listing bytes + 3, as the directory inode records it. */
  fileSize: number;
  index: DirIndexEntry[];
}

const HEADER_SIZE = 12;
const ENTRY_FIXED = 8;
const MAX_PER_HEADER = 256;

/** Appends one directory's listing to the directory table. */
export function writeListing(table: MetadataWriter, entries: ListingEntry[]): WrittenListing {
  const listingStart = table.length;
  const start = table.positionOf(listingStart);
  const index: DirIndexEntry[] = [];
  const blockOf = (at: number) => Math.floor(at / METADATA_SIZE);

  let i = 0;
  while (i < entries.length) {
    const first = entries[i];
    const headerAt = table.length;
    if (headerAt !== listingStart && blockOf(headerAt) !== blockOf(listingStart) && (index.length === 0 || blockOf(headerAt) !== blockOf(listingStart + index[index.length - 1].index))) {
      index.push({ index: headerAt - listingStart, start: table.positionOf(headerAt).block, name: first.name });
    }
    // Entries for this header: same inode block, inode numbers in range, same table block.
    let end = i;
    let at = headerAt + HEADER_SIZE;
    while (
      end < entries.length &&
      end - i < MAX_PER_HEADER &&
      entries[end].inode.block === first.inode.block &&
      Math.abs(entries[end].inodeNumber - first.inodeNumber) <= 32767 &&
      (end === i || blockOf(at) === blockOf(headerAt))
    ) {
      at += ENTRY_FIXED + entries[end].name.length;
      end++;
    }
    const head = Buffer.alloc(HEADER_SIZE);
    head.writeUInt32LE(end - i - 1, 0);
    head.writeUInt32LE(first.inode.block, 4);
    head.writeUInt32LE(first.inodeNumber, 8);
    table.append(head);
    for (let k = i; k < end; k++) {
      const e = entries[k];
      const rec = Buffer.alloc(ENTRY_FIXED + e.name.length);
      rec.writeUInt16LE(e.inode.offset, 0);
      rec.writeInt16LE(e.inodeNumber - first.inodeNumber, 2);
      rec.writeUInt16LE(e.type, 4);
      rec.writeUInt16LE(e.name.length - 1, 6);
      e.name.copy(rec, ENTRY_FIXED);
      table.append(rec);
    }
    i = end;
  }
  return { start, fileSize: table.length - listingStart + 3, index };
}
