// The web console's browser scenario (run by tests/console.rs, which starts
// the host, deploys order-approval and passes, in the environment:
// CAIRN_URL, CAIRN_OPERATOR_TOKEN, CAIRN_READER_TOKEN, CAIRN_CHROMIUM,
// CAIRN_SCREENSHOTS, CAIRN_WAITING (order A-200's instance, waiting for
// approval), CAIRN_OTHER (order A-300's, waiting too) and CAIRN_FAULTED
// (order A-000's, faulted in its validation).
//
// Debian's Chromium, headless, driven by playwright-core: no browser
// download. Every wait is for a condition, with Playwright's timeout as the
// bound; a failed step throws, and node exits non-zero with the step's name.

import { chromium } from 'playwright-core';
import path from 'node:path';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (tests/console.rs sets it)`);
  return v;
};
const url = env('CAIRN_URL');
const operator = env('CAIRN_OPERATOR_TOKEN');
const reader = env('CAIRN_READER_TOKEN');
const shots = env('CAIRN_SCREENSHOTS');
const waiting = env('CAIRN_WAITING');
const other = env('CAIRN_OTHER');
const faulted = env('CAIRN_FAULTED');
const TIMEOUT = 30_000;

// The API, from node, as a second client beside the page.
async function api(method, route, body, token = operator) {
  const r = await fetch(url + route, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await r.json();
  if (!r.ok) throw new Error(`${method} ${route}: ${r.status} ${JSON.stringify(data)}`);
  return data;
}

let step = 'starting';
function begin(name) {
  step = name;
  console.log(`step: ${name}`);
}

async function shot(page, name) {
  const file = path.join(shots, `${name}.png`);
  await page.mouse.move(0, 0); // no hover outline in the picture
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot: ${file}`);
}

async function until(what, f) {
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const browser = await chromium.launch({ executablePath: env('CAIRN_CHROMIUM'), args: ['--no-sandbox'] });
try {
  const page = await browser.newPage({ viewport: { width: 1500, height: 1000 } });
  page.setDefaultTimeout(TIMEOUT);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('dialog', (d) => d.accept());

  begin('open the console: it asks for a token, since the API answers 401');
  await page.goto(url + '/');
  await page.locator('#token-dialog[open]').waitFor();
  await page.locator('#token-input').fill(operator);
  await page.locator('#token-submit').click();
  await page.locator('#definitions tbody tr').first().waitFor();
  await page.locator('#live[data-live="on"]').waitFor();
  await shot(page, '1-definitions');

  begin('the definition page: diagram with counts where instances wait');
  await page.locator('#definitions tbody tr').filter({ hasText: 'order-approval' }).locator('a.mono').first().click();
  await page.locator('svg.diagram').waitFor();
  const approvalPath = 'main/needs-approval/await-approval';
  await page.locator(`[data-badge="${approvalPath}"].badge-here`).waitFor();
  const count = await page.locator(`[data-badge="${approvalPath}"].badge-here text`).textContent();
  if (count.trim() !== '2') throw new Error(`expected 2 instances waiting at ${approvalPath}, the badge says ${count}`);
  const faults = await page.locator('[data-badge="main/validate"].badge-faulted text').textContent();
  if (faults.trim() !== '1') throw new Error(`expected 1 instance faulted at main/validate, the badge says ${faults}`);
  await shot(page, '2-definition-heat-map');

  begin('find an instance by its correlation value');
  await page.locator('nav a[href="#/instances"]').click();
  await page.locator('#f-correlation').fill('A-200');
  await page.locator('#search').click();
  await until('one row for A-200', async () => (await page.locator('#instances tbody tr').count()) === 1 && (await page.locator(`#instances tbody tr[data-id="${waiting}"]`).count()) === 1);
  await page.locator('#total').filter({ hasText: 'of 1' }).waitFor();
  await shot(page, '3-instances-by-correlation');

  begin('see its position on the diagram and what it waits for');
  await page.locator(`#instances a[href="#/instances/${waiting}"]`).click();
  await page.locator(`svg.diagram g.pos[data-path="${approvalPath}"]`).waitFor();
  await page.locator('#waits li').filter({ hasText: 'a message approve' }).filter({ hasText: 'A-200' }).waitFor();
  await page.locator('#history tbody tr').filter({ hasText: 'submit-order' }).first().waitFor();
  await shot(page, '4-instance-waiting');

  begin('watch it complete without a reload (server-sent events)');
  await page.evaluate(() => (window.__notReloaded = true));
  await api('POST', '/v1/messages', { operation: 'approve', body: { order_id: 'A-200', approved: true, approver: 'browser test' } });
  await page.locator('#instance-status [data-status="completed"]').waitFor();
  if (!(await page.evaluate(() => window.__notReloaded === true))) throw new Error('the page reloaded');
  await page.locator('#history tbody tr').filter({ hasText: 'approve' }).first().waitFor();
  await shot(page, '5-instance-completed-live');

  begin('a faulted instance shows its fault and where it was raised');
  await page.goto(`${url}/#/instances/${faulted}`);
  await page.locator('#fault-box').filter({ hasText: 'invalid-order' }).filter({ hasText: 'main/validate' }).waitFor();
  await page.locator('svg.diagram [data-badge="main/validate"].badge-faulted').waitFor();
  await shot(page, '5b-instance-faulted');

  begin('set a breakpoint by clicking an activity');
  await page.locator('#instance-header a[href^="#/definitions/"]').click();
  const confirmBox = page.locator('svg.diagram g[data-path="main/approved/confirm"] > rect.box');
  await confirmBox.waitFor();
  await confirmBox.click();
  await page.locator('svg.diagram [data-bp="main/approved/confirm"]').waitFor();
  const bps = await api('GET', '/v1/breakpoints');
  if (!bps.breakpoints.some((b) => b.process === 'order-approval' && b.path === 'main/approved/confirm')) throw new Error(`breakpoint not set: ${JSON.stringify(bps)}`);
  await shot(page, '6-breakpoint-set');

  begin('a new instance stops there, and the page shows where and why');
  const sent = await api('POST', '/v1/messages', { operation: 'submit-order', body: { order_id: 'B-1', customer: 'ada', lines: [{ sku: 'widget', qty: 2 }] }, wait_reply: true });
  const stopped = sent.instance;
  console.log(`stopped instance: ${stopped}`);
  await page.locator(`[data-badge="main/approved/confirm"].badge-here`).waitFor();
  await page.goto(`${url}/#/instances/${stopped}`);
  await page.locator('#stopped').filter({ hasText: 'Stopped at a breakpoint' }).filter({ hasText: 'main/approved/confirm' }).waitFor();
  await page.locator('svg.diagram g.stopped[data-path="main/approved/confirm"]').waitFor();
  await shot(page, '7-stopped-at-breakpoint');

  begin('edit its variables while suspended, then resume it and watch it complete');
  const vars = page.locator('#variables');
  await until('editable variables', async () => !(await vars.evaluate((e) => e.readOnly)));
  const edited = JSON.parse(await vars.inputValue());
  edited.customer = 'edited in the console';
  await vars.fill(JSON.stringify(edited, null, 2));
  await page.locator('#save-variables').click();
  await page.locator('#notice').filter({ hasText: 'Variables saved' }).waitFor();
  await shot(page, '8-variables-edited');
  await page.evaluate(() => (window.__notReloaded = true));
  await page.locator('#resume-stopped').click();
  await page.locator('#instance-status [data-status="completed"]').waitFor();
  if (!(await page.evaluate(() => window.__notReloaded === true))) throw new Error('the page reloaded');
  const final = JSON.parse(await vars.inputValue());
  if (final.customer !== 'edited in the console' || final.status !== 'confirmed') throw new Error(`final variables: ${JSON.stringify(final)}`);
  await shot(page, '9-resumed-and-completed');

  begin('clear the breakpoint with a second click');
  await page.locator('svg.diagram g[data-path="main/approved/confirm"] > rect.box').click();
  await until('no breakpoint', async () => (await api('GET', '/v1/breakpoints')).breakpoints.length === 0);
  await until('no red dot', async () => (await page.locator('svg.diagram [data-bp]').count()) === 0);

  begin('bulk suspend and resume a selection');
  await page.goto(`${url}/#/instances?process=order-approval&status=waiting`);
  await page.locator(`#instances tr[data-id="${other}"]`).waitFor();
  await page.locator(`#instances input[data-id="${other}"]`).check();
  await page.locator('#bulk-suspend').click();
  await page.locator('#bulk-result').filter({ hasText: 'suspend: 1 done' }).waitFor();
  if ((await api('GET', `/v1/instances/${other}`)).status !== 'suspended') throw new Error('bulk suspend did not suspend');
  await page.goto(`${url}/#/instances?process=order-approval&status=suspended`);
  await page.locator(`#instances tr[data-id="${other}"]`).waitFor();
  await page.locator('#select-all').check();
  await shot(page, '10-bulk-selection');
  await page.locator('#bulk-resume').click();
  await page.locator('#bulk-result').filter({ hasText: 'resume: 1 done' }).waitFor();
  if ((await api('GET', `/v1/instances/${other}`)).status !== 'waiting') throw new Error('bulk resume did not resume');

  begin('an operator action refused without permission shows the reason');
  await page.locator('#token-change').click();
  await page.locator('#token-dialog[open]').waitFor();
  await page.locator('#token-input').fill(reader);
  await page.locator('#token-submit').click();
  await page.goto(`${url}/#/instances/${other}`);
  await page.locator('#suspend:not([disabled])').waitFor();
  await page.locator('#suspend').click();
  await page.locator('#notice.error').filter({ hasText: 'Refused (403)' }).filter({ hasText: 'needs a token of role operator' }).waitFor();
  await shot(page, '11-refused-without-permission');
  if ((await api('GET', `/v1/instances/${other}`)).status !== 'waiting') throw new Error('the refused suspend changed the instance');

  begin('every kind of activity is drawn: switch cases side by side, loops, scopes with their handlers, pick arms');
  const defs = (await api('GET', '/v1/definitions')).definitions;
  const versionOf = (name) => {
    const d = defs.find((d) => d.name === name);
    if (!d) throw new Error(`process ${name} is not deployed: ${JSON.stringify(defs.map((d) => d.name))}`);
    return d.version;
  };
  // The boxes of a composite's arms, as drawn: [x, y] of each direct child.
  const armsOf = (selector) =>
    page.locator(selector).first().evaluate((g) =>
      [...g.children].filter((c) => c.matches('g.act')).map((c) => {
        const b = c.getBBox();
        return [Math.round(b.x), Math.round(b.y)];
      }));
  const sideBySide = (arms) => arms.length > 1 && new Set(arms.map(([x]) => x)).size === arms.length && new Set(arms.map(([, y]) => y)).size === 1;
  await page.goto(`${url}/#/definitions/${versionOf('language')}`);
  await page.locator('svg.diagram g.kind-switch').first().waitFor();
  const cases = await armsOf('svg.diagram g.kind-switch');
  if (!sideBySide(cases)) throw new Error(`the switch's cases are not side by side: ${JSON.stringify(cases)}`);
  const loops = await page.locator('svg.diagram .loop-mark').count();
  if (loops < 2) throw new Error(`expected loop-back arrows on the repeat-until and the for-each, found ${loops}`);
  if ((await page.locator('svg.diagram g.kind-scope g.handler').count()) < 1) throw new Error('no fault handler drawn beside a scope');
  await page.locator('svg.diagram g.handler.compensation').first().waitFor();
  await shot(page, '12-definition-scopes-loops-switch');
  await page.goto(`${url}/#/definitions/${versionOf('picker')}`);
  await page.locator('svg.diagram g.kind-pick').first().waitFor();
  const arms = await armsOf('svg.diagram g.kind-pick');
  if (!sideBySide(arms)) throw new Error(`the pick's arms are not side by side: ${JSON.stringify(arms)}`);
  for (const label of ['on message', 'after']) {
    if ((await page.locator('svg.diagram g.kind-pick text.arm-label').filter({ hasText: label }).count()) < 1) throw new Error(`no pick arm labelled "${label}…"`);
  }
  await shot(page, '13-definition-pick');

  if (errors.length) throw new Error(`errors in the page: ${errors.join('; ')}`);
  console.log('console scenario: every step passed');
} catch (e) {
  console.error(`console scenario failed at step "${step}": ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
