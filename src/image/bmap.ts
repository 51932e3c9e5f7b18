/**
 * Block maps in bmaptool's format (version 2.0): which 4 KiB blocks of an image hold data, with a
 * sha256 per range, so flashers write only those and check what they wrote.
 */
import { createHash } from 'node:crypto';

export const BMAP_BLOCK_SIZE = 4096;

export interface MappedRange {
  first: number; // block numbers, inclusive
  last: number;
  sha256: string;
}

export interface BlockMap {
  imageSize: number;
  blockSize: number;
  ranges: MappedRange[];
}

export function mappedBlocks(map: BlockMap): number {
  return map.ranges.reduce((n, r) => n + (r.last - r.first + 1), 0);
}

export function formatBmap(map: BlockMap): string {
  const blocksCount = Math.ceil(map.imageSize / map.blockSize);
  const zeros = '0'.repeat(64);
  const render = (fileChecksum: string) =>
    [
      '<?xml version="1.0" ?>',
      '<!-- Block map made by edgekit: the blocks of the image that hold data; the others are zero',
      '     and need not be written. -->',
      '<bmap version="2.0">',
      `    <ImageSize> ${map.imageSize} </ImageSize>`,
      `    <BlockSize> ${map.blockSize} </BlockSize>`,
      `    <BlocksCount> ${blocksCount} </BlocksCount>`,
      `    <MappedBlocksCount> ${mappedBlocks(map)} </MappedBlocksCount>`,
      '    <ChecksumType> sha256 </ChecksumType>',
      `    <BmapFileChecksum> ${fileChecksum} </BmapFileChecksum>`,
      '    <BlockMap>',
      ...map.ranges.map(
        (r) => `        <Range chksum="${r.sha256}"> ${r.first === r.last ? r.first : `${r.first}-${r.last}`} </Range>`,
      ),
      '    </BlockMap>',
      '</bmap>',
      '',
    ].join('\n');
  // The file's own checksum is taken with its field set to zeros, as bmaptool checks it.
  const checksum = createHash('sha256').update(render(zeros)).digest('hex');
  return render(checksum);
}

export function parseBmap(text: string): BlockMap {
  const num = (tag: string) => {
    const m = new RegExp(`<${tag}>\\s*(\\d+)\\s*</${tag}>`).exec(text);
    if (!m) throw new Error(`bmap: missing <${tag}>`);
    return Number(m[1]);
  };
  const ranges: MappedRange[] = [];
  for (const m of text.matchAll(/<Range chksum="([0-9a-f]{64})">\s*(\d+)(?:-(\d+))?\s*<\/Range>/g)) {
    ranges.push({ sha256: m[1], first: Number(m[2]), last: Number(m[3] ?? m[2]) });
  }
  return { imageSize: num('ImageSize'), blockSize: num('BlockSize'), ranges };
}
