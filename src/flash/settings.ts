/**
 * Templated per-device settings for a batch of cards: `--set hostname=gw-{serial}` plus a CSV of
 * serials gives each target its own settings.
 *
 * The CSV's first line names the columns (`serial,token`); each later line is one device. A
 * `{column}` in a setting is replaced by that column's value in the device's row (`{{` and `}}`
 * are literal braces).
 *
 * Which row goes to which target (assignRows):
 *   - with a `port` column, the row whose port matches the target's stable by-path port name
 *     (/dev/disk/by-path/...; the full path, its last component, or a run of its '-'-separated
 *     fields such as `usb-0:1.2:1.0`), so a card always gets the settings of the slot it sits in;
 *   - otherwise rows are taken in the order the targets were given, starting at row `first`
 *     (0 = the first data row), one row per target.
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { checkSettingKey, checkSettings, type DeviceSettings } from './device-config.js';
import { EdgekitError } from '../util/errors.js';

/** Setting key -> template text (with `{column}` placeholders). */
export type SettingTemplates = Record<string, string>;

/** One device: column name -> value. Where it came from is kept aside (rowOrigin) for error messages. */
export type SerialsRow = Record<string, string>;

const origins = new WeakMap<SerialsRow, string>();

/** `file:line` of a row read by readSerialsCsv, if it was. */
export function rowOrigin(row: SerialsRow): string | undefined {
  return origins.get(row);
}

const PLACEHOLDER = /\{\{|\}\}|\{([^{}]*)\}|[{}]/g;
const COLUMN_NAME = /^[A-Za-z_][A-Za-z0-9_.-]*$/;

/** `['hostname=gw-{serial}', 'wifi.ssid=shop']` -> templates; keys are checked, placeholders parsed. */
export function parseSetFlags(flags: string[]): SettingTemplates {
  const out: SettingTemplates = {};
  for (const flag of flags) {
    const eq = flag.indexOf('=');
    if (eq <= 0) throw new EdgekitError(`--set "${flag}": expected key=value`);
    const key = flag.slice(0, eq).trim();
    const value = flag.slice(eq + 1);
    checkSettingKey(key, `--set ${key}`);
    if (Object.hasOwn(out, key)) throw new EdgekitError(`--set ${key}: given twice`);
    placeholders(value, `--set ${key}`); // syntax errors now, not per device
    out[key] = value;
  }
  return out;
}

/** Column names used by a template, in order; throws on a stray brace. */
export function placeholders(template: string, where: string): string[] {
  const names: string[] = [];
  for (const m of template.matchAll(PLACEHOLDER)) {
    if (m[0] === '{{' || m[0] === '}}') continue;
    if (m[1] === undefined || !COLUMN_NAME.test(m[1])) {
      throw new EdgekitError(`${where}: "${m[0]}" at character ${m.index! + 1} is not a {column} placeholder (write {{ or }} for a literal brace)`);
    }
    names.push(m[1]);
  }
  return names;
}

/** Templates with every `{column}` filled from `row`, then checked as settings. */
export function expandSettings(templates: SettingTemplates, row: SerialsRow = {}): DeviceSettings {
  const where = rowOrigin(row) ?? 'serials row';
  const out: DeviceSettings = {};
  for (const [key, template] of Object.entries(templates)) {
    out[key] = template.replace(PLACEHOLDER, (all, name: string | undefined) => {
      if (all === '{{') return '{';
      if (all === '}}') return '}';
      if (name === undefined) throw new EdgekitError(`--set ${key}: stray "${all}"`);
      const value = Object.hasOwn(row, name) ? row[name] : undefined;
      if (value === undefined && rowOrigin(row) === undefined && Object.keys(row).length === 0) {
        throw new EdgekitError(`--set ${key} uses {${name}}: give --serials <file.csv> with a "${name}" column`);
      }
      if (value === undefined || value === '') {
        throw new EdgekitError(`${where}: --set ${key} needs {${name}}, but this row has no value for "${name}"`);
      }
      return value;
    });
  }
  checkSettings(out, where);
  return out;
}

/**
 * Reads a CSV of devices (RFC 4180: commas, "quoted" fields with "" for a quote, CRLF or LF).
 * Blank lines and lines starting with '#' are skipped. Every row must have as many fields as the
 * header; errors name file:line.
 */
export function readSerialsCsv(path: string): SerialsRow[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new EdgekitError(`${path}: cannot read the serials file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  if (text.startsWith('\uFEFF')) text = text.slice(1); // spreadsheet programs add a BOM
  const records = csvRecords(text, path);
  if (records.length === 0) throw new EdgekitError(`${path}: empty; the first line must name the columns (e.g. serial,token)`);
  const [header, ...rows] = records;
  const columns = header.fields.map((c) => c.trim());
  const seen = new Set<string>();
  for (const c of columns) {
    if (!COLUMN_NAME.test(c)) throw new EdgekitError(`${path}:${header.line}: column name "${c}" must be letters, digits, _ . - (starting with a letter)`);
    if (seen.has(c)) throw new EdgekitError(`${path}:${header.line}: column "${c}" appears twice`);
    seen.add(c);
  }
  return rows.map((r) => {
    if (r.fields.length !== columns.length) {
      throw new EdgekitError(`${path}:${r.line}: ${r.fields.length} fields, but the header names ${columns.length} (${columns.join(',')})`);
    }
    const row: SerialsRow = {};
    columns.forEach((c, i) => (row[c] = r.fields[i].trim()));
    origins.set(row, `${path}:${r.line}`);
    return row;
  });
}

interface CsvRecord {
  line: number;
  fields: string[];
}

function csvRecords(text: string, path: string): CsvRecord[] {
  const records: CsvRecord[] = [];
  let line = 1;
  let i = 0;
  while (i < text.length) {
    const startLine = line;
    // Skip blank and comment lines.
    const eol = text.indexOf('\n', i);
    const rawLine = text.slice(i, eol < 0 ? text.length : eol).replace(/\r$/, '');
    if (rawLine.trim() === '' || rawLine.startsWith('#')) {
      i = eol < 0 ? text.length : eol + 1;
      line++;
      continue;
    }
    const fields: string[] = [];
    let field = '';
    for (;;) {
      if (text[i] === '"' && field.trim() === '') {
        field = '';
        i++;
        for (;;) {
          if (i >= text.length) throw new EdgekitError(`${path}:${startLine}: a quoted field is not closed`);
          const ch = text[i];
          if (ch === '"' && text[i + 1] === '"') {
            field += '"';
            i += 2;
          } else if (ch === '"') {
            i++;
            break;
          } else {
            if (ch === '\n') line++;
            field += ch;
            i++;
          }
        }
        // Only spaces may follow the closing quote before the separator.
        while (text[i] === ' ' || text[i] === '\t') i++;
        if (i < text.length && text[i] !== ',' && text[i] !== '\n' && text[i] !== '\r') {
          throw new EdgekitError(`${path}:${line}: text after a closing quote (write "" for a quote inside a quoted field)`);
        }
        continue;
      }
      const ch = text[i];
      if (i >= text.length || ch === '\n' || (ch === '\r' && text[i + 1] === '\n')) {
        fields.push(field);
        i = i >= text.length ? i : ch === '\r' ? i + 2 : i + 1;
        line++;
        break;
      }
      if (ch === ',') {
        fields.push(field);
        field = '';
        i++;
        continue;
      }
      if (ch === '"') throw new EdgekitError(`${path}:${line}: a quote inside an unquoted field (quote the whole field and write "")`);
      field += ch;
      i++;
    }
    records.push({ line: startLine, fields });
  }
  return records;
}

export interface RowTarget {
  /** The device path or image file given as a target. */
  path: string;
  /** Its stable port path (/dev/disk/by-path/...), when it is a device. */
  byPath?: string;
}

/** The row for each target, in target order (see the file comment for the rules). */
export function assignRows(rows: SerialsRow[], targets: RowTarget[], opts: { first?: number } = {}): SerialsRow[] {
  const byPort = rows.length > 0 && Object.hasOwn(rows[0], 'port');
  if (!byPort) {
    const first = opts.first ?? 0;
    if (first + targets.length > rows.length) {
      throw new EdgekitError(`serials: ${targets.length} target(s) from row ${first + 1} need ${first + targets.length} row(s), the file has ${rows.length}`);
    }
    return targets.map((_, i) => rows[first + i]);
  }
  return targets.map((t) => {
    if (!t.byPath) throw new EdgekitError(`${t.path}: the serials file matches rows by port, but this target has no /dev/disk/by-path name`);
    const hits = rows.filter((r) => portMatches(r.port, t.byPath!));
    if (hits.length === 0) throw new EdgekitError(`${t.path}: no serials row has a port matching ${t.byPath}`);
    if (hits.length > 1) {
      throw new EdgekitError(`${t.path}: serials rows ${hits.map((r) => rowOrigin(r) ?? r.port).join(' and ')} both match port ${t.byPath}`);
    }
    return hits[0];
  });
}

function portMatches(port: string | undefined, byPath: string): boolean {
  if (!port) return false;
  const name = basename(byPath);
  return port === byPath || port === name || `-${name}-`.includes(`-${port}-`);
}
