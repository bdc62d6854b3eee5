// HTTP/3 in a real browser: Debian chromium driven by playwright-core loads one page several
// times and reports, for every load, the protocol of the page and of its subresources and
// whether they arrived whole. Run by tests/browser_h3.rs, which decides the flags and judges
// the report; arguments come as environment variables:
//   URL           the page (https://localhost:PORT/)
//   LOADS         how many times to load it (each load adds ?load=N, the cache is off)
//   QUIC_ARGS     chromium flags for QUIC, space separated (--enable-quic, --origin-to-force-quic-on=...)
//   PIXELS        image pixels to read back, "x,y;x,y;..."
//   CHROMIUM      the browser binary; PLAYWRIGHT_CORE the playwright-core directory
//   HOME          where chromium finds its NSS database (~/.pki/nssdb) with the CA it trusts
//   NETLOG_DIR    optional: write chromium's net log there (chromium-PID.json), to see why QUIC
//                 was or was not used
// Prints one JSON object: { version, args, loads: [...], error }.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

(async () => {
  const report = { version: null, args: [], loads: [], error: null };
  const url = new URL(process.env.URL);
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-h3-'));
  // The server listens on 127.0.0.1 only; chromium would try ::1 first for "localhost".
  report.args = ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-default-apps',
    `--host-resolver-rules=MAP ${url.hostname} 127.0.0.1`,
    ...(process.env.QUIC_ARGS || '').split(' ').filter(Boolean)];
  if (process.env.NETLOG_DIR) {
    report.args.push(`--log-net-log=${path.join(process.env.NETLOG_DIR, `chromium-${process.pid}.json`)}`,
      '--net-log-capture-mode=Everything');
  }
  let ctx = null;
  try {
    ctx = await chromium.launchPersistentContext(userDataDir, {
      executablePath: process.env.CHROMIUM,
      headless: true,
      args: report.args,
      timeout: 30000,
    });
    report.version = ctx.browser() ? ctx.browser().version() : null;
    const page = ctx.pages()[0] || await ctx.newPage();
    const cdp = await ctx.newCDPSession(page);
    await cdp.send('Network.enable');
    await cdp.send('Network.setCacheDisabled', { cacheDisabled: true });
    const pixels = (process.env.PIXELS || '').split(';').filter(Boolean).map((p) => p.split(',').map(Number));
    for (let i = 0; i < Number(process.env.LOADS || 1); i++) {
      const load = { status: null, protocol: null, altSvc: null, resources: [], image: null, script: null, error: null };
      report.loads.push(load);
      try {
        const target = new URL(url);
        target.searchParams.set('load', String(i));
        const resp = await page.goto(target.href, { waitUntil: 'load', timeout: 20000 });
        load.status = resp.status();
        load.altSvc = resp.headers()['alt-svc'] || null;
        Object.assign(load, await page.evaluate((pixels) => {
          const nav = performance.getEntriesByType('navigation')[0];
          const resources = performance.getEntriesByType('resource').map((r) => ({
            path: new URL(r.name).pathname,
            protocol: r.nextHopProtocol,
            decodedBodySize: r.decodedBodySize,
          }));
          const img = document.getElementById('pic');
          let image = null;
          if (img && img.complete && img.naturalWidth > 0) {
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth;
            canvas.height = img.naturalHeight;
            const g = canvas.getContext('2d');
            g.drawImage(img, 0, 0);
            image = {
              width: img.naturalWidth,
              height: img.naturalHeight,
              pixels: pixels.map(([x, y]) => Array.from(g.getImageData(x, y, 1, 1).data.slice(0, 3))),
            };
          }
          const script = window.portcullisScript
            ? { ran: true, textLength: window.portcullisScript.text.length, checksum: window.portcullisScript.checksum }
            : { ran: false };
          return { protocol: nav.nextHopProtocol, resources, image, script };
        }, pixels));
      } catch (e) {
        load.error = String(e && e.message || e).split('\n')[0];
      }
    }
  } catch (e) {
    report.error = String(e && e.stack || e);
  } finally {
    if (ctx) await ctx.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  console.log(JSON.stringify(report));
  process.exit(report.error ? 1 : 0);
})();
