// Drives Debian's chromium (headless) through the reservation page. Run by tests/browser.rs:
//   node reserve.mjs reserve|reserve-nojs BASE_URL NAME EMAIL SHOT_DIR
//   node reserve.mjs confirm LINK SHOT_DIR
// Prints one JSON line with what the page showed. reserve.example.test resolves to 127.0.0.1
// inside the browser only (--host-resolver-rules); the edge's certificate is self-signed.
import { chromium } from "playwright-core";

const [mode, url, ...rest] = process.argv.slice(2);
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
    "--host-resolver-rules=MAP reserve.example.test 127.0.0.1",
  ],
});
try {
  const nojs = mode === "reserve-nojs";
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, javaScriptEnabled: !nojs });
  const page = await ctx.newPage();
  page.setDefaultTimeout(15000);
  if (mode === "reserve" || nojs) {
    const [name, email, shots] = rest;
    await page.goto(url + "/");
    await page.fill("#name", name);
    let availability = null;
    if (!nojs) {
      // The script checks availability as the user types and shows the full name.
      await page.waitForSelector("#availability.ok");
      availability = await page.textContent("#availability");
    }
    const full = await page.textContent("#full");
    await page.fill("#email", email);
    await page.screenshot({ path: `${shots}/${mode}-1-form.png`, fullPage: true });
    const [resp] = await Promise.all([page.waitForNavigation(), page.click("#reserve")]);
    await page.screenshot({ path: `${shots}/${mode}-2-result.png`, fullPage: true });
    console.log(JSON.stringify({
      status: resp.status(),
      availability,
      full,
      title: await page.textContent("#result"),
      fqdn: await page.textContent("#fqdn"),
      message: await page.textContent("#message"),
    }));
  } else if (mode === "confirm") {
    const [shots] = rest;
    const resp = await page.goto(url);
    await page.screenshot({ path: `${shots}/confirm.png`, fullPage: true });
    console.log(JSON.stringify({
      status: resp.status(),
      title: await page.textContent("#result"),
      fqdn: await page.textContent("#fqdn"),
      message: await page.textContent("#message"),
    }));
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
} finally {
  await browser.close();
}
