// Drives Debian's chromium (headless) through the reservation page. Run by tests/browser.rs:
//   node reserve.mjs reserve|reserve-nojs BASE_URL NAME EMAIL SHOT_DIR
//   node reserve.mjs confirm LINK SHOT_DIR
// Prints one JSON line with what the page showed, and how it came: `responses` lists every
// response with the protocol Chromium's network stack reports (DevTools Network domain, works
// with JavaScript off); with JavaScript on, `*_protocol` and `resources` are the page's
// Performance API entries (`nextHopProtocol`). reserve.example.test resolves to 127.0.0.1
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
  const responses = [];
  const cdp = await ctx.newCDPSession(page);
  await cdp.send("Network.enable");
  const seen = (r) => responses.push({ url: r.url, status: r.status, protocol: r.protocol });
  cdp.on("Network.requestWillBeSent", (e) => e.redirectResponse && seen(e.redirectResponse));
  cdp.on("Network.responseReceived", (e) => seen(e.response));
  const navProtocol = () =>
    nojs ? null : page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
  const resources = () =>
    nojs
      ? null
      : page.evaluate(() =>
          performance
            .getEntriesByType("resource")
            .map((e) => ({ name: e.name, nextHopProtocol: e.nextHopProtocol })),
        );
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
    const formProtocol = await navProtocol();
    const formResources = await resources();
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
      form_protocol: formProtocol,
      form_resources: formResources,
      result_protocol: await navProtocol(),
      responses,
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
      result_protocol: await navProtocol(),
      responses,
    }));
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
} finally {
  await browser.close();
}
