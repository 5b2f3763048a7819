// A person using the console, in Debian's chromium driven by playwright-core (run by
// tests/integration/console.rs, which starts vap and the camera). Prints one JSON line with
// what was seen; exits 1 with the reason (and a screenshot) on the first thing that fails.
//
// env: CONSOLE_URL, CONSOLE_TOKEN, CAMERA_URL, PLAYWRIGHT_DIR (where playwright-core is
// installed), SCREENSHOTS (a directory).
import { createRequire } from 'node:module';
import path from 'node:path';

const env = (k) => {
  if (!process.env[k]) throw new Error(`${k} is not set`);
  return process.env[k];
};
const base = env('CONSOLE_URL');
const shots = env('SCREENSHOTS');
const require = createRequire(path.join(env('PLAYWRIGHT_DIR'), 'package.json'));
const { chromium } = require('playwright-core');

const check = (ok, what) => { if (!ok) throw new Error(what); };
const report = {};

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  // Headless, and nothing that reaches beyond this machine (its network is closed).
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
const consoleErrors = [];
page.on('pageerror', (e) => consoleErrors.push(e.message));
page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });

try {
  // 1. A wrong token is refused, in words.
  await page.goto(base + '/');
  const dialog = page.locator('#login');
  await dialog.waitFor({ state: 'visible', timeout: 10000 });
  await page.fill('#login-token', 'not-the-token');
  await page.press('#login-token', 'Enter');
  await page.waitForFunction(() => /refused this token/.test(document.getElementById('login-why').textContent) &&
    document.getElementById('login').open, null, { timeout: 10000 });
  report.refusal = await page.textContent('#login-why');

  // 2. The right one: the (empty) scenario list and the form.
  await page.fill('#login-token', env('CONSOLE_TOKEN'));
  await page.press('#login-token', 'Enter');
  await page.waitForSelector('table.scenarios tbody tr', { timeout: 10000 });
  check(!(await dialog.isVisible()), 'the login dialog closes with the right token');
  // Every control has a label a screen reader reads.
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll('main input, main select, main textarea')]
    .filter((i) => !(i.labels && i.labels.length) && !i.getAttribute('aria-label') && !i.closest('fieldset'))
    .map((i) => i.id || i.name));
  check(unlabelled.length === 0, `unlabelled controls: ${unlabelled}`);
  await page.waitForSelector('#model option', { state: 'attached', timeout: 10000 });

  // 3. Add the camera through the form, by keyboard where a person would.
  await page.focus('#camera_url');
  await page.keyboard.type(env('CAMERA_URL'));
  await page.keyboard.press('Tab');
  await page.keyboard.type('Walker');
  await page.fill('#fps', '5');
  await page.fill('#snapshot_interval_s', '1');
  await page.click('#add-scenario button[type=submit]');
  await page.waitForFunction(() => /^#\/scenario\//.test(location.hash), null, { timeout: 10000 });
  report.scenario_uuid = await page.evaluate(() => location.hash.split('/')[2]);

  // 4. The picture appears with a box over the person, drawn by the overlay.
  await page.waitForSelector('.overlay .det[data-class="person"] rect', { timeout: 120000 });
  await page.waitForFunction(() => document.querySelector('#stage img').naturalWidth > 0, null, { timeout: 10000 });
  const box = await page.evaluate(() => {
    const stage = document.getElementById('stage').getBoundingClientRect();
    const rects = [...document.querySelectorAll('.overlay .det[data-class="person"] rect')].map((r) => r.getBoundingClientRect());
    return { stage: [stage.left, stage.top, stage.right, stage.bottom], rects: rects.map((r) => [r.left, r.top, r.width, r.height]) };
  });
  report.boxes = box.rects.length;
  for (const [x, y, w, h] of box.rects) {
    check(w > 10 && h > 20, `a person's box is drawn with a size: ${w}x${h}`);
    check(x >= box.stage[0] - 1 && y >= box.stage[1] - 1 && x + w <= box.stage[2] + 1 && y + h <= box.stage[3] + 1, 'the box lies on the picture');
  }
  // The box is over the person: the picture's pixels inside it differ from the grey around.
  const contrast = await page.evaluate(async () => {
    const img = document.querySelector('#stage img');
    const r = document.querySelector('.overlay .det[data-class="person"] rect');
    const vb = document.querySelector('.overlay').viewBox.baseVal;
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    const sx = img.naturalWidth / vb.width, sy = img.naturalHeight / vb.height;
    const x = +r.getAttribute('x') * sx, y = +r.getAttribute('y') * sy;
    const w = +r.getAttribute('width') * sx, h = +r.getAttribute('height') * sy;
    const spread = (d) => { let lo = 255, hi = 0; for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); } return hi - lo; };
    const inside = g.getImageData(Math.max(0, x + w / 4), Math.max(0, y + h / 4), Math.max(1, w / 2), Math.max(1, h / 2)).data;
    return spread(inside);
  });
  check(contrast > 40, `the box covers something other than the grey background (spread ${contrast})`);
  await page.screenshot({ path: path.join(shots, 'console-scenario-first.png') });

  // 5. Draw a line across the walker's path and save it.
  await page.selectOption('#draw-kind', 'line');
  await page.fill('#draw-name', 'middle');
  await page.click('#draw');
  await page.locator('#stage').scrollIntoViewIfNeeded();
  const stage = await page.locator('#stage svg').boundingBox();
  await page.mouse.move(stage.x + stage.width * 0.5, stage.y + stage.height * 0.97);
  await page.mouse.down();
  await page.mouse.move(stage.x + stage.width * 0.5, stage.y + stage.height * 0.5, { steps: 5 });
  await page.mouse.move(stage.x + stage.width * 0.5, stage.y + stage.height * 0.03, { steps: 5 });
  await page.mouse.up();
  await page.waitForSelector('[data-region="line:middle"]', { timeout: 5000 });
  await page.click('#save-regions');
  await page.waitForFunction(() => /Saved \(options revision/.test(document.getElementById('notice').textContent), null, { timeout: 10000 });

  // 6. Its count rises as the walker crosses, and the crossing is listed with its picture.
  await page.waitForFunction(() => {
    const cells = [...document.querySelectorAll('[data-total^="line:middle:person:crossed_"]')];
    return cells.reduce((n, c) => n + Number(c.textContent), 0) >= 1;
  }, null, { timeout: 90000 });
  report.crossings_shown = await page.evaluate(() => [...document.querySelectorAll('[data-total^="line:middle:person:crossed_"]')]
    .reduce((n, c) => n + Number(c.textContent), 0));
  await page.waitForSelector('#events li[data-kind="line_crossed"]', { timeout: 30000 });
  await page.waitForFunction(() => {
    const img = document.querySelector('#events li[data-kind="line_crossed"] img');
    return img && img.naturalWidth > 0;
  }, null, { timeout: 20000 });
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(shots, 'console-scenario.png'), fullPage: true });

  // 7. On a phone-sized window the page still fits: nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, `the scenario page is ${overflow} px wider than a phone`);
  await page.setViewportSize({ width: 1280, height: 800 });

  // 8. Back to the list: the scenario with its health; stop it there and see its status change.
  await page.click('text=← Scenarios');
  const row = page.locator(`tr[data-scenario="${report.scenario_uuid}"]`);
  await row.waitFor({ timeout: 10000 });
  await page.waitForFunction((id) => {
    const r = document.querySelector(`tr[data-scenario="${id}"]`);
    return r && r.querySelector('.status').textContent === 'active' && r.children[3].textContent !== '—';
  }, report.scenario_uuid, { timeout: 20000 });
  await page.screenshot({ path: path.join(shots, 'console-scenarios.png') });
  await row.getByRole('button', { name: 'Stop Walker' }).click();
  await page.waitForFunction((id) => {
    const s = document.querySelector(`tr[data-scenario="${id}"] .status`);
    return s && s.textContent !== 'active';
  }, report.scenario_uuid, { timeout: 20000 });
  report.status_after_stop = await row.locator('.status').textContent();

  // 9. The API's docs: schemas, examples, and a request sent from the page.
  await page.goto(base + '/docs');
  const init = page.locator('details[id="op-post-/api/v1/scenario/init"]');
  await init.locator(':scope > summary').click();
  check((await init.textContent()).includes('camera_url'), 'the request schema names camera_url');
  const health = page.locator('details[id="op-get-/health"]');
  await health.locator(':scope > summary').click();
  await health.getByRole('button', { name: 'Send' }).click();
  await page.waitForFunction(() => /HTTP 200/.test(document.querySelector('[id$="-health-out"]').textContent), null, { timeout: 10000 });

  check(consoleErrors.filter((e) => !/Failed to load resource/.test(e)).length === 0, `errors in the page: ${consoleErrors}`);
  console.log(JSON.stringify(report));
  await browser.close();
} catch (e) {
  await page.screenshot({ path: path.join(shots, 'failure.png') }).catch(() => {});
  console.log(`FAILED: ${e.stack || e}\nreport so far: ${JSON.stringify(report)}\npage errors: ${consoleErrors.join(' | ')}`);
  await browser.close();
  process.exit(1);
}
