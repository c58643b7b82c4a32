"""A district admin, a school admin and a teacher use the admin in a real browser."""

from __future__ import annotations

import pytest

from tests.browser.conftest import screenshot
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def login(page, live_server, username):
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")


def student_rows(page):
    return page.locator("#result_list tbody tr").all_inner_texts()


def test_district_admin_works_in_their_district(page, live_server, north, south):
    login(page, live_server, north.users["district_admin"].username)
    screenshot(page, "admin-index-district-admin")
    page.goto(f"{live_server.url}/admin/schools/student/")
    rows = student_rows(page)
    assert len(rows) == 3
    text = page.content()
    assert north.a1.last_name in text and south.a1.last_name not in text
    screenshot(page, "student-list-district-admin")

    page.fill("#searchbar", north.b1.last_name)
    page.press("#searchbar", "Enter")
    page.wait_for_load_state()
    assert len(student_rows(page)) == 1
    page.click(f"text={north.b1.last_name}")
    page.wait_for_selector("#student_form")
    assert page.locator("text=Beta Middle").count() >= 1  # the enrollment inline
    screenshot(page, "student-change-district-admin")

    page.click("text=History")
    page.wait_for_load_state()
    assert "Audit log" in page.content()
    screenshot(page, "student-history")


def test_bad_input_shows_a_field_error(page, live_server, north):
    login(page, live_server, north.users["district_admin"].username)
    page.goto(f"{live_server.url}/admin/schools/academicsession/add/")
    page.fill("#id_name", "Spring 2027")
    page.select_option("#id_session_type", "semester")
    page.fill("#id_school_year", "2027")
    page.fill("#id_start_date", "2027-06-01")
    page.fill("#id_end_date", "2027-01-10")
    page.click("input[name=_save]")
    page.wait_for_selector(".errornote")
    assert "cannot be before" in page.content()
    screenshot(page, "session-add-error")


def test_school_admin_and_teacher_see_their_students_only(page, live_server, north):
    login(page, live_server, north.users["school_admin"].username)
    page.goto(f"{live_server.url}/admin/schools/student/")
    assert len(student_rows(page)) == 2  # both students of school A
    screenshot(page, "student-list-school-admin")
    page.context.clear_cookies()  # sign out
    login(page, live_server, north.users["teacher"].username)
    page.goto(f"{live_server.url}/admin/schools/student/")
    rows = student_rows(page)
    assert len(rows) == 1 and north.a1.last_name in rows[0]
    response = page.goto(f"{live_server.url}/admin/schools/student/{north.b1.pk}/change/")
    assert response.status == 404
    screenshot(page, "teacher-other-student-404")
