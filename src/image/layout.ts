/**
 * Where each partition of an image goes, from the board's layout and the image's root kind.
 * One plan serves the builder, inspect/verify and the update agent (which slot lives where).
 */
import type { Board } from '../spec/board.js';
import { EdgekitError } from '../util/errors.js';

export type PartitionRole = 'boot' | 'system-a' | 'system-b' | 'config' | 'data';

export interface PlannedPartition {
  role: PartitionRole;
  /** 1-based partition number as the kernel names it (vda1, mmcblk0p5). */
  number: number;
  start: number; // bytes
  size: number; // bytes
  /** GPT type GUID, or MBR type byte. */
  gptType?: string;
  mbrType?: number;
  /** MBR only: a logical partition inside the extended partition. */
  logical?: boolean;
}

export interface LayoutPlan {
  table: 'gpt' | 'mbr';
  diskSize: number;
  partitions: PlannedPartition[];
  /** MBR only: the extended partition that holds the logical ones. */
  extended?: { number: number; start: number; size: number };
}

export const GPT_TYPES = {
  esp: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
  linux: '0FC63DAF-8483-4772-8E79-3D69D8477DE4',
  basicData: 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7',
} as const;

const SECTOR = 512;
/** Room at the end of a GPT disk for the backup entries and header. */
const GPT_BACKUP_BYTES = 33 * SECTOR;

export function planLayout(board: Board, root: 'ram' | 'disk'): LayoutPlan {
  const { layout } = board;
  const align = layout.alignment;
  if (align % 4096 !== 0) throw new EdgekitError(`board ${board.id}: layout.alignment must be a multiple of 4 KiB`);
  const roles: Array<{ role: PartitionRole; size: number }> = [{ role: 'boot', size: layout.boot.size }];
  if (root === 'disk') {
    roles.push({ role: 'system-a', size: layout.system.size }, { role: 'system-b', size: layout.system.size });
  }
  roles.push({ role: 'config', size: layout.config.size }, { role: 'data', size: layout.data.size });
  for (const r of roles) {
    if (r.size % align !== 0) throw new EdgekitError(`board ${board.id}: layout size of ${r.role} must be a multiple of the alignment (${align} bytes)`);
  }

  const partitions: PlannedPartition[] = [];
  let cursor = align; // the first `align` bytes hold the partition table and the embedded manifest
  let extended: LayoutPlan['extended'];
  const mbrNeedsExtended = layout.table === 'mbr' && roles.length > 4;
  roles.forEach((r, i) => {
    const logical = mbrNeedsExtended && i >= 3;
    if (logical && !extended) {
      extended = { number: 4, start: cursor, size: 0 };
    }
    // Each logical partition is preceded by its EBR: keep one alignment unit for it.
    if (logical) cursor += align;
    const number = logical ? 5 + (i - 3) : i + 1;
    partitions.push({
      role: r.role,
      number,
      start: cursor,
      size: r.size,
      logical: logical || undefined,
      ...(layout.table === 'gpt'
        ? { gptType: r.role === 'boot' ? GPT_TYPES.esp : r.role === 'config' ? GPT_TYPES.basicData : GPT_TYPES.linux }
        : { mbrType: r.role === 'boot' || r.role === 'config' ? 0x0c : 0x83 }),
    });
    cursor += r.size;
  });
  if (extended) extended.size = cursor - extended.start;
  const end = layout.table === 'gpt' ? cursor + GPT_BACKUP_BYTES : cursor;
  const diskSize = Math.ceil(end / align) * align;
  return { table: layout.table, diskSize, partitions, extended };
}

export function partitionFor(plan: LayoutPlan, role: PartitionRole): PlannedPartition | undefined {
  return plan.partitions.find((p) => p.role === role);
}
