"""Swagger UI, as a person uses it: open the docs, Authorize, call GET /users/me."""

from __future__ import annotations

from playwright.async_api import Page, expect

TIMEOUT = 20_000


async def open_docs(page: Page, live_server: str, shot) -> None:
    await page.goto(f"{live_server}/api/v1/")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("RESTful API Server", timeout=TIMEOUT)
    await shot("docs-loaded")
    await page.locator("button.btn.authorize").first.click()
    await expect(page.locator(".modal-ux")).to_be_visible()
    await shot("authorize-dialog")


async def call_me(page: Page, shot) -> None:
    operation = page.locator("#operations-users-getCurrentUser")
    await operation.locator(".opblock-summary").click()
    await operation.locator("button.try-out__btn").click()
    await operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table .response .response-col_status").first
    await expect(status).to_have_text("200", timeout=TIMEOUT)
    await expect(operation.locator(".live-responses-table .microlight").first).to_contain_text('"username": "root"')
    await shot("users-me-200")


async def test_password_flow_signs_in_and_calls_users_me(page: Page, live_server: str, shot) -> None:
    await open_docs(page, live_server, shot)
    flow = page.locator(".auth-container").nth(0)  # the document declares the password flow first
    await expect(flow.locator("h4")).to_contain_text("password")
    await flow.locator("#oauth_username").fill("root")
    await flow.locator("#oauth_password").fill("q")
    await shot("password-filled")
    await flow.locator("button.modal-btn.authorize").click()
    await expect(flow.locator("button.modal-btn", has_text="Logout")).to_be_visible(timeout=TIMEOUT)
    await shot("password-authorized")
    await page.locator(".modal-ux button.btn-done").first.click()
    await call_me(page, shot)


async def test_authorization_code_flow_with_pkce_through_our_sign_in_page(page: Page, live_server: str, shot) -> None:
    await open_docs(page, live_server, shot)
    flow = page.locator(".auth-container").nth(1)
    await expect(flow.locator("h4")).to_contain_text("authorizationCode with PKCE")
    async with page.expect_popup() as popup_info:
        await flow.locator("button.modal-btn.authorize").click()
    popup = await popup_info.value
    await expect(popup.locator("h1")).to_have_text("Sign in to continue", timeout=TIMEOUT)
    await shot("sign-in-page", popup)
    await popup.fill("#username", "root")
    await popup.fill("#password", "q")
    await popup.get_by_role("button", name="Approve").click()
    await expect(flow.locator("button.modal-btn", has_text="Logout")).to_be_visible(timeout=TIMEOUT)
    await shot("code-authorized")
    await page.locator(".modal-ux button.btn-done").first.click()
    await call_me(page, shot)
