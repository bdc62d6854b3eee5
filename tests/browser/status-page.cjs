// The status page in a real browser: Debian chromium driven by playwright-core.
// Run by tests/status_page.rs; arguments come as environment variables:
//   URL          the status page (http://127.0.0.1:PORT/)
//   EXPECT_SITES comma-separated site names the page must list
//   EXPECT_SNI   an SNI name that must show among the recent TLS errors
//   SCREENSHOT   where to save a PNG of the page
//   CHROMIUM     the browser binary; PLAYWRIGHT_CORE the playwright-core directory
// Prints one JSON object: { ok, failures: [...], console: [...] }.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

(async () => {
  const failures = [];
  const consoleLines = [];
  const check = (cond, what) => { if (!cond) failures.push(what); };
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-status-'));
  const ctx = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-default-apps'],
    viewport: { width: 1200, height: 900 },
    timeout: 30000,
  });
  try {
    const page = ctx.pages()[0] || await ctx.newPage();
    page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
    const external = [];
    page.on('request', (r) => { if (!r.url().startsWith(new URL(process.env.URL).origin)) external.push(r.url()); });
    const resp = await page.goto(process.env.URL, { waitUntil: 'load', timeout: 20000 });
    check(resp && resp.status() === 200, `status ${resp && resp.status()}`);
    await page.waitForSelector('body[data-loaded="true"]', { timeout: 10000 });
    // A second poll gives the rate chart its first line.
    await page.waitForFunction(() => document.querySelectorAll('#rate-chart path.line').length > 0, null, { timeout: 10000 });
    const sites = await page.$$eval('#certs tbody tr', (rows) => rows.map((r) => r.dataset.site));
    for (const s of process.env.EXPECT_SITES.split(',')) check(sites.includes(s), `site ${s} not listed (${sites})`);
    const days = await page.$$eval('#certs .days-left', (els) => els.map((e) => e.textContent));
    check(days.length > 0 && days.every((d) => /^\d+ days$/.test(d) && parseInt(d, 10) > 0), `days left: ${days}`);
    const bars = await page.$$eval('#certs svg.daysbar rect', (els) => els.length);
    check(bars >= 2, `days-left bars: ${bars}`);
    const failureBars = await page.$$eval('#failure-chart rect.bar', (els) => els.length);
    check(failureBars >= 1, `failure chart bars: ${failureBars}`);
    // One bar per protocol: HTTP/1.1, HTTP/2, port 80, HTTP/3.
    const protocolBars = await page.$$eval('#protocol-chart rect.bar', (els) => els.length);
    check(protocolBars === 4, `protocol chart bars: ${protocolBars}`);
    const errors = await page.$$eval('#errors tbody tr', (rows) => rows.map((r) => r.textContent));
    check(errors.some((e) => e.includes(process.env.EXPECT_SNI) && e.includes('unknown_sni')), `recent errors: ${errors}`);
    const backends = await page.$eval('#backends tbody', (t) => t.textContent);
    if (process.env.EXPECT_BACKEND) check(backends.includes(process.env.EXPECT_BACKEND) && backends.includes('up'), `backends: ${backends}`);
    check(external.length === 0, `external requests: ${external}`);
    const csp = consoleLines.filter((l) => /Content Security Policy|Refused to/i.test(l));
    check(csp.length === 0, `CSP violations: ${csp}`);
    const errs = consoleLines.filter((l) => l.startsWith('error') || l.startsWith('pageerror'));
    check(errs.length === 0, `console errors: ${errs}`);
    await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  } catch (e) {
    failures.push(String(e && e.stack || e));
  } finally {
    await ctx.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  console.log(JSON.stringify({ ok: failures.length === 0, failures, console: consoleLines }));
  process.exit(failures.length === 0 ? 0 : 1);
})();
