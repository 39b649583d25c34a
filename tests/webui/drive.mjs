// Drives recurd's page in a real Chromium (playwright-core + Debian's chromium):
// (with WEBUI_KEY: type the API key when the page asks), stream a document,
// wait for the chart, generate and stop, fork two continuations, download a
// snapshot and restore it, delete a session. Exits 1 on any console error,
// page error, failed request or HTTP error answer (except the one 401 that
// makes the page ask for the key), or a step that does not happen in time. Usage:
//   node drive.mjs URL DOCUMENT OUTDIR [SCREENSHOT.png]
// PLAYWRIGHT_DIR is build/playwright; CHROMIUM names the browser binary.
import { createRequire } from 'node:module';
import path from 'node:path';
import fs from 'node:fs';

// PLAYWRIGHT_DIR: where scripts/install-playwright put node_modules/playwright-core
const require = createRequire(path.resolve(process.env.PLAYWRIGHT_DIR || 'build/playwright') + '/');
const { chromium } = require('playwright-core');
const [url, doc, outdir, shot] = process.argv.slice(2);
fs.mkdirSync(outdir, { recursive: true });

const problems = [];
let aborts = 0; // the Stop button aborts one generate request on purpose
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
const ctx = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
const page = await ctx.newPage();
// every action (click, fill, screenshot) fails within 20 s, like the waits below,
// so a hang is reported with its step instead of running into the test's timeout
page.setDefaultTimeout(20000);
const KEY = process.env.WEBUI_KEY;
let allow401 = KEY ? 1 : 0, allow401log = allow401; // the page's first call, before the key
page.on('console', (m) => {
  if (m.type() !== 'error') return;
  if (allow401log && /status of 401/.test(m.text())) allow401log--;
  else problems.push('console: ' + m.text());
});
page.on('pageerror', (e) => problems.push('pageerror: ' + e.message));
page.on('requestfailed', (r) => {
  if (aborts > 0 && r.url().endsWith('/generate') && /ABORTED/.test(r.failure()?.errorText)) aborts--;
  else problems.push(`requestfailed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`);
});
page.on('response', (r) => {
  if (r.status() === 401 && allow401) allow401--;
  else if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`);
});

const step = async (name, fn) => {
  const t = Date.now();
  try { await fn(); } catch (e) {
    await page.screenshot({ path: path.join(outdir, 'failed.png'), fullPage: true, timeout: 5000 }).catch(() => {});
    console.error(`step "${name}" failed: ${e.message}\nstatus: ${await page.textContent('#status', { timeout: 2000 }).catch(() => '?')}`);
    console.error(problems.join('\n'));
    await browser.close(); process.exit(1);
  }
  console.log(`${name}: ${Date.now() - t} ms`);
};
const T = { timeout: 20000 };
const sessions = () => page.locator('#sessions tbody tr').count();

await step('load', async () => {
  await page.goto(url);
  if (KEY) {
    await page.waitForSelector('#key', { ...T, state: 'visible' });
    await page.fill('#key', KEY);
    await page.click('#keyform button');
  }
  await page.waitForFunction(() => /state/.test(document.getElementById('model').textContent), null, T);
});
await step('stream', async () => {
  await page.setInputFiles('#file', doc);
  await page.click('#go');
  await page.waitForFunction(() => /^streamed/.test(document.getElementById('status').textContent), null, T);
  await page.waitForSelector('#chart svg polyline', T);
  const n = +(await page.getAttribute('#chart', 'data-points'));
  if (!(n >= 2)) throw new Error(`chart has ${n} points`);
  if (!(await page.locator('#text span[tabindex]').count())) throw new Error('no scored tokens shown');
  await page.locator('#text span[tabindex]').nth(5).focus();
  if (await page.isHidden('#tip')) throw new Error('no tooltip on focus');
  if (!/logprob/.test(await page.textContent('#tip'))) throw new Error('tooltip without logprob');
  await page.screenshot({ path: path.join(outdir, 'streamed.png'), fullPage: true });
});
await step('generate+stop', async () => {
  await page.fill('#maxt', '100000000');
  await page.fill('#seed', '7');
  // 10^8 tokens (the server allows it, test_page.py): the tiny test model would
  // take many minutes, so the stop below always wins; stop as soon as the
  // request has gone out (the fork step checks that tokens stream in)
  const sent = page.waitForRequest((r) => r.url().endsWith('/generate'), T);
  await page.click('#gen');
  await sent;
  aborts = 1;
  await page.click('#stopgen');
  await page.waitForFunction(() => /generation stopped/.test(document.getElementById('status').textContent), null, T);
});
await step('fork', async () => {
  const before = await sessions();
  await page.fill('#maxt', '24');
  await page.click('#fork2');
  await page.waitForSelector('#out1', T);
  await page.waitForFunction(() => !document.getElementById('gen').disabled, null, T);
  for (const id of ['#out', '#out1'])
    if (!(await page.textContent(id)).length) throw new Error(`${id} empty`);
  await page.waitForFunction((b) => document.querySelectorAll('#sessions tbody tr').length === b + 2, before, T);
  await page.screenshot({ path: path.join(outdir, 'forked.png'), fullPage: true });
});
await step('download+restore', async () => {
  const before = await sessions();
  const [dl] = await Promise.all([page.waitForEvent('download', T),
    page.locator('#sessions tbody tr').first().getByRole('button', { name: /^download/ }).click()]);
  const file = path.join(outdir, 'session.recur-snapshot');
  await dl.saveAs(file);
  if (!fs.statSync(file).size) throw new Error('empty snapshot');
  await page.setInputFiles('#restore', file);
  await page.waitForFunction(() => /^restored/.test(document.getElementById('status').textContent), null, T);
  if ((await sessions()) !== before + 1) throw new Error('restore added no session');
});
await step('delete', async () => {
  const before = await sessions();
  await page.locator('#sessions tbody tr').last().getByRole('button', { name: /^delete/ }).click();
  await page.waitForFunction((b) => document.querySelectorAll('#sessions tbody tr').length === b - 1, before, T);
});
if (shot) await page.evaluate(() => { document.activeElement.blur(); scrollTo(0, 0); });
if (shot) await page.screenshot({ path: shot, clip: { x: 0, y: 0, width: 1280, height: 900 } });
await browser.close();
if (problems.length) { console.error(problems.join('\n')); process.exit(1); }
console.log('ok');
