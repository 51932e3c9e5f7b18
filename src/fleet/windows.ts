/**
 * Maintenance windows: UTC time ranges, optionally on some weekdays, in which a rollout offers its
 * release. UTC because the server cannot know each device's local time, and an operator's rule
 * ("nights, Europe") reads the same on every replica.
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

/** What is wrong with a window, or null. */
export function windowProblem(w: MaintenanceWindow): string | null {
  const s = minutesOf(w.start);
  const e = minutesOf(w.end);
  if (s === null || s === DAY_MINUTES) return `start ${JSON.stringify(w.start)} is not a UTC time HH:MM (00:00-23:59)`;
  if (e === null) return `end ${JSON.stringify(w.end)} is not a UTC time HH:MM (00:00-24:00)`;
  if (s === e) return `start and end are both ${w.start}: an empty window`;
  const bad = w.days.find((d) => !WEEKDAYS.includes(d));
  if (bad) return `day ${JSON.stringify(bad)} is not one of ${WEEKDAYS.join(', ')}`;
  return null;
}

/**
 * True when `at` (unix ms) falls in one of the windows; no windows means any time. A window whose
 * end is before its start runs past midnight: its days name the day it starts on, so
 * `fri 22:00-02:00` includes Saturday 01:00 but not Friday 01:00.
 */
export function inWindow(windows: MaintenanceWindow[], at: number): boolean {
  if (!windows.length) return true;
  const t = new Date(at);
  const minute = t.getUTCHours() * 60 + t.getUTCMinutes();
  const today = WEEKDAYS[t.getUTCDay()];
  const yesterday = WEEKDAYS[(t.getUTCDay() + 6) % 7];
  return windows.some((w) => {
    const s = minutesOf(w.start)!;
    const e = minutesOf(w.end)!;
    const on = (d: Weekday) => !w.days.length || w.days.includes(d);
    if (s < e) return on(today) && minute >= s && minute < e;
    return (on(today) && minute >= s) || (on(yesterday) && minute < e);
  });
}

/**
 * A window as an operator writes it on the command line: `[DAYS ]HH:MM-HH:MM`, DAYS a comma list
 * of days or day ranges (`mon-fri`, `sat,sun`, `mon,wed-fri`). Throws Error with the reason.
 */
export function parseWindow(text: string): MaintenanceWindow {
  const m = /^\s*(?:([a-z,-]+)\s+)?(\d\d:\d\d)-(\d\d:\d\d)\s*$/i.exec(text);
  if (!m) throw new Error(`"${text}": expected [DAYS ]HH:MM-HH:MM in UTC, e.g. "mon-fri 01:00-05:00" or "22:00-04:00"`);
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
  const problem = windowProblem(w);
  if (problem) throw new Error(`"${text}": ${problem}`);
  return w;
}

/** The window as parseWindow reads it. */
export function formatWindow(w: MaintenanceWindow): string {
  return `${w.days.length ? `${w.days.join(',')} ` : ''}${w.start}-${w.end}`;
}
