// A web page of another site, open in the operator's browser, tries the admin listener. Run by
// tests/admin.rs:
//   node admin.mjs ADMIN_BASE NAME
// Serves pages from http://attacker.test:PORT (a site of its own: attacker.test resolves to
// 127.0.0.1 inside the browser only), each of which submits itself at once to ADMIN_BASE:
// forms in the three body types a form can send, a no-cors fetch, a GET of the export; and the
// same form from a file: page. Prints one JSON line: what the admin listener answered each.
import { chromium } from "playwright-core";
import http from "node:http";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const [admin, name] = process.argv.slice(2);
const release = `${admin}/reservations/release?name=${encodeURIComponent(name)}`;

const form = (enctype) => `<!doctype html><title>win a prize</title>
<form method="post" action="${release}" enctype="${enctype}">
<input name="name" value="${name}"></form>
<script>document.forms[0].submit()</script>`;

const pages = {
  "/urlencoded": form("application/x-www-form-urlencoded"),
  "/multipart": form("multipart/form-data"),
  "/text": form("text/plain"),
  "/fetch": `<!doctype html><script>
fetch(${JSON.stringify(release)}, { method: "POST", mode: "no-cors" })
  .then(() => document.title = "sent", () => document.title = "failed");
</script>`,
  "/export": `<!doctype html><script>location = ${JSON.stringify(`${admin}/reservations/export`)}</script>`,
};

const server = http.createServer((req, res) => {
  const body = pages[req.url];
  res.writeHead(body ? 200 : 404, { "content-type": "text/html" });
  res.end(body || "");
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const site = `http://attacker.test:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP attacker.test 127.0.0.1",
  ],
});
const out = {};
try {
  const ctx = await browser.newContext();
  // The admin listener's answer to the request the page made (the page cannot read it; the
  // browser can). A fresh tab each: the page navigates away while loading.
  const answer = async (url, matches) => {
    const page = await ctx.newPage();
    page.setDefaultTimeout(15000);
    const [resp] = await Promise.all([
      page.waitForResponse((r) => matches(r.url()) && r.request().method() !== "OPTIONS"),
      // Interrupted by the page's own navigation: what counts is the response above.
      page.goto(url).catch(() => {}),
    ]);
    const origin = (await resp.request().allHeaders())["origin"] ?? null;
    await page.close();
    return { status: resp.status(), origin };
  };
  const toRelease = (u) => u.startsWith(`${admin}/reservations/release`);
  for (const p of ["/urlencoded", "/multipart", "/text", "/fetch"]) {
    out[p.slice(1)] = await answer(site + p, toRelease);
  }
  out.export = await answer(site + "/export", (u) => u.startsWith(`${admin}/reservations/export`));
  // A page saved to disk and opened: its origin is `null`.
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "outpost-admin-")), "page.html");
  fs.writeFileSync(file, form("application/x-www-form-urlencoded"));
  out.file = await answer("file://" + file, toRelease);
  fs.rmSync(path.dirname(file), { recursive: true });
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify(out));
