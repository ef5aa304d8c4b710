// Debian's chromium (headless, driven by playwright-core) opens a page served through the edge
// whose script speaks WebSocket through the edge too. Run by tests/websocket.rs:
//   node chromium.mjs PAGE_URL
// Prints one JSON line: { status, seen, code, reason } (what the page's WebSocket saw), or
// { error }. The edge's certificate is self-signed: certificate errors are ignored.
import { chromium } from "playwright-core";

const [url] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors",
  ],
});
try {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await ctx.newPage();
  page.setDefaultTimeout(15000);
  const resp = await page.goto(url);
  const result = await Promise.race([
    page.evaluate(() => window.result),
    new Promise((resolve) => setTimeout(() => resolve({ error: "timeout" }), 15000)),
  ]);
  console.log(JSON.stringify({ status: resp.status(), ...result }));
} catch (e) {
  console.log(JSON.stringify({ error: String(e) }));
} finally {
  await browser.close();
}
