// The login flow in real Chromium (Debian's, driven by playwright-core), headless.
//
//   node browser.mjs CONFIG.json
//
// CONFIG: { chromium, app_url, rules, out_dir, user, javascript }
//   rules:       --host-resolver-rules (the test hosts mapped to the edge on loopback)
//   javascript:  false runs the whole flow with JavaScript off (the pages must not need it)
// Prints one JSON line: { login_url, login_title, final_url, final_status, body, cookies,
//   responses, login_nav_protocol, app_nav_protocol, app_resources, fetch_status }.
//   responses:   every response the browser got, redirects included, with the protocol
//                Chromium's network stack reports (DevTools Network domain; works with
//                JavaScript off)
//   *_protocol, app_resources: what the page's Performance API reports (JavaScript on only;
//                null otherwise); app_resources holds a fetch the app page makes to the app.
import fs from 'node:fs';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
fs.mkdirSync(cfg.out_dir, { recursive: true });

const browser = await chromium.launch({
  executablePath: cfg.chromium,
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    `--host-resolver-rules=${cfg.rules}`,
  ],
});
try {
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    javaScriptEnabled: cfg.javascript,
    viewport: { width: 900, height: 700 },
  });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  const responses = [];
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  const seen = (r, method) =>
    responses.push({ url: r.url, status: r.status, protocol: r.protocol, method });
  cdp.on('Network.requestWillBeSent', (e) => {
    if (e.redirectResponse) seen(e.redirectResponse, e.request.method);
  });
  cdp.on('Network.responseReceived', (e) => seen(e.response, null));
  const navProtocol = () =>
    cfg.javascript
      ? page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol)
      : null;

  // The protected page: sent to the login page.
  await page.goto(cfg.app_url);
  await page.waitForSelector('button[type=submit]');
  const loginUrl = page.url();
  const loginTitle = await page.title();
  const loginNavProtocol = await navProtocol();
  await page.screenshot({ path: `${cfg.out_dir}/login-page.png`, fullPage: true });

  // The provider's button, then the provider's own form.
  await Promise.all([page.waitForURL((u) => !u.href.startsWith(loginUrl)), page.click('button[type=submit]')]);
  await page.waitForSelector('input[name=login]');
  await page.screenshot({ path: `${cfg.out_dir}/provider-page.png`, fullPage: true });
  await page.fill('input[name=login]', cfg.user);
  await page.fill('input[name=password]', 'any');
  const appOrigin = new URL(cfg.app_url).origin;
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url() === cfg.app_url && r.request().isNavigationRequest()),
    page.click('button[type=submit]'),
  ]);
  await page.waitForURL(cfg.app_url);
  await page.screenshot({ path: `${cfg.out_dir}/app-page.png`, fullPage: true });
  const body = await page.evaluate(() => document.body.innerText).catch(async () => page.content());
  const appNavProtocol = await navProtocol();
  // A request from the page to the app (the cookie goes along): a resource entry of its own.
  let appResources = null;
  let fetchStatus = null;
  if (cfg.javascript) {
    fetchStatus = await page.evaluate(async () => {
      const r = await fetch('/chromium/api', { headers: { Accept: 'application/json' } });
      await r.text();
      return r.status;
    });
    appResources = await page.evaluate(() =>
      performance.getEntriesByType('resource').map((e) => ({
        name: e.name,
        nextHopProtocol: e.nextHopProtocol,
      })),
    );
  }
  const cookies = await context.cookies([appOrigin, new URL(loginUrl).origin]);
  console.log(JSON.stringify({
    login_url: loginUrl,
    login_title: loginTitle,
    final_url: page.url(),
    final_status: response.status(),
    body: cfg.javascript ? body : await page.content(),
    cookies,
    responses,
    login_nav_protocol: loginNavProtocol,
    app_nav_protocol: appNavProtocol,
    app_resources: appResources,
    fetch_status: fetchStatus,
  }));
} finally {
  await browser.close();
}
