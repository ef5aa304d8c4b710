// The login flow in real Chromium (Debian's, driven by playwright-core), headless.
//
//   node browser.mjs CONFIG.json
//
// CONFIG: { chromium, app_url, rules, out_dir, user, javascript }
//   rules:       --host-resolver-rules (the test hosts mapped to the edge on loopback)
//   javascript:  false runs the whole flow with JavaScript off (the pages must not need it)
// Prints one JSON line: { login_url, login_title, final_url, final_status, body, cookies }.
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

  // The protected page: sent to the login page.
  await page.goto(cfg.app_url);
  await page.waitForSelector('button[type=submit]');
  const loginUrl = page.url();
  const loginTitle = await page.title();
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
  const cookies = await context.cookies([appOrigin, new URL(loginUrl).origin]);
  console.log(JSON.stringify({
    login_url: loginUrl,
    login_title: loginTitle,
    final_url: page.url(),
    final_status: response.status(),
    body: cfg.javascript ? body : await page.content(),
    cookies,
  }));
} finally {
  await browser.close();
}
