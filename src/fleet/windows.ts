/**
 * Maintenance windows: time-of-day ranges, optionally on some weekdays, in which a rollout offers its
 * release. UTC unless the window names an IANA time zone ("nights in Berlin" follows Berlin's
 * daylight saving time). The zone is the operator's, not read from devices: the server cannot know
 * a device's local time, and the rule must read the same on every replica.
 */
import type { MaintenanceWindow, Weekday } from './store/store.js';

export const WEEKDAYS: Weekday[] = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];
const DAY_MINUTES = 24 * 60;

/** 'HH:MM' -> minutes since midnight (24:00 allowed), or null when it is not a time of day. */
export function minutesOf(hhmm: string): number | null {
  const m = /^([01]\d|2[0-4]):([0-5]\d)$/.exec(hhmm);
  if (!m) return null;
  const v = Number(m[1]) * 60 + Number(m[2]);
  return v <= DAY_MINUTES ? v : null;
}

/** Formatters giving the weekday and time of day, by zone name: only zones that exist, so at most a few hundred. */
const clocks = new Map<string, Intl.DateTimeFormat>();

/** The formatter for `timeZone`, or undefined when it is not a zone name this Node knows. */
function clockOf(timeZone: string): Intl.DateTimeFormat | undefined {
  // Names only, not offsets like "+02:00": an offset does not follow daylight saving time, which is what a zone is for.
  if (!/^[A-Za-z][A-Za-z0-9_+/-]*$/.test(timeZone)) return undefined;
  let f = clocks.get(timeZone);
  if (!f) {
    try {
      f = new Intl.DateTimeFormat('en-US', { timeZone, weekday: 'short', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
    } catch {
      return undefined; // RangeError: no such zone
    }
    clocks.set(timeZone, f);
  }
  return f;
}

/** Weekday and minute of the day at `at` (unix ms) in `timeZone` (UTC when not given). */
function localTime(at: number, timeZone: string | undefined): { day: number; minute: number } {
  const t = new Date(at);
  if (!timeZone) return { day: t.getUTCDay(), minute: t.getUTCHours() * 60 + t.getUTCMinutes() };
  let day = 0, hour = 0, minute = 0;
  for (const part of clockOf(timeZone)!.formatToParts(t)) {
    if (part.type === 'weekday') day = WEEKDAYS.indexOf(part.value.toLowerCase() as Weekday);
    else if (part.type === 'hour') hour = Number(part.value);
    else if (part.type === 'minute') minute = Number(part.value);
  }
  return { day, minute: hour * 60 + minute };
}

/** What is wrong with a window, or null. */
export function windowProblem(w: MaintenanceWindow): string | null {
  const s = minutesOf(w.start);
  const e = minutesOf(w.end);
  const zone = w.timeZone ?? 'UTC';
  if (w.timeZone !== undefined && !clockOf(w.timeZone)) return `time zone ${JSON.stringify(w.timeZone)} is not an IANA zone name (e.g. Europe/Berlin, America/New_York, UTC)`;
  if (s === null || s === DAY_MINUTES) return `start ${JSON.stringify(w.start)} is not a ${zone} time HH:MM (00:00-23:59)`;
  if (e === null) return `end ${JSON.stringify(w.end)} is not a ${zone} time HH:MM (00:00-24:00)`;
  if (s === e) return `start and end are both ${w.start}: an empty window`;
  const bad = w.days.find((d) => !WEEKDAYS.includes(d));
  if (bad) return `day ${JSON.stringify(bad)} is not one of ${WEEKDAYS.join(', ')}`;
  return null;
}

/**
 * True when `at` (unix ms) falls in one of the windows; no windows means any time. A window whose
 * end is before its start runs past midnight: its days name the day it starts on, so
 * `fri 22:00-02:00` includes Saturday 01:00 but not Friday 01:00. Times are read on the window's
 * zone's clock: on the night daylight saving time starts, a window inside the skipped hour does
 * not open; the night it ends, a window in the repeated hour is open for both of them.
 */
export function inWindow(windows: MaintenanceWindow[], at: number): boolean {
  if (!windows.length) return true;
  return windows.some((w) => {
    const { day, minute } = localTime(at, w.timeZone);
    const today = WEEKDAYS[day];
    const yesterday = WEEKDAYS[(day + 6) % 7];
    const s = minutesOf(w.start)!;
    const e = minutesOf(w.end)!;
    const on = (d: Weekday) => !w.days.length || w.days.includes(d);
    if (s < e) return on(today) && minute >= s && minute < e;
    return (on(today) && minute >= s) || (on(yesterday) && minute < e);
  });
}

/**
 * A window as an operator writes it on the command line: `[DAYS ]HH:MM-HH:MM[ ZONE]`, DAYS a comma
 * list of days or day ranges (`mon-fri`, `sat,sun`, `mon,wed-fri`), ZONE an IANA time zone (UTC
 * when left out). Throws Error with the reason.
 */
export function parseWindow(text: string): MaintenanceWindow {
  const m = /^\s*(?:([a-z,-]+)\s+)?(\d\d:\d\d)-(\d\d:\d\d)(?:\s+(\S+))?\s*$/i.exec(text);
  if (!m)
    throw new Error(`"${text}": expected [DAYS ]HH:MM-HH:MM[ ZONE], e.g. "mon-fri 01:00-05:00", "22:00-04:00" (UTC) or "sat,sun 02:00-05:00 Europe/Berlin"`);
  const days: Weekday[] = [];
  for (const part of (m[1] ?? '').toLowerCase().split(',').filter(Boolean)) {
    const [a, b] = part.split('-');
    const from = WEEKDAYS.indexOf(a as Weekday);
    const to = b === undefined ? from : WEEKDAYS.indexOf(b as Weekday);
    if (from < 0 || to < 0) throw new Error(`"${text}": "${part}" is not a day or day range (${WEEKDAYS.join(', ')})`);
    // A range may wrap the week end (fri-mon).
    for (let i = from; ; i = (i + 1) % 7) {
      if (!days.includes(WEEKDAYS[i])) days.push(WEEKDAYS[i]);
      if (i === to) break;
    }
  }
  const w: MaintenanceWindow = { start: m[2], end: m[3], days: days.sort((x, y) => WEEKDAYS.indexOf(x) - WEEKDAYS.indexOf(y)) };
  if (m[4] !== undefined) w.timeZone = m[4];
  const problem = windowProblem(w);
  if (problem) throw new Error(`"${text}": ${problem}`);
  return w;
}

/** The window as parseWindow reads it. */
export function formatWindow(w: MaintenanceWindow): string {
  return `${w.days.length ? `${w.days.join(',')} ` : ''}${w.start}-${w.end}${w.timeZone ? ` ${w.timeZone}` : ''}`;
}
