"""docs/img/docker-ls-predictions.png: Label Studio (in its container) showing the docker smoke project's
predictions, taken with headless Chromium while docker/smoke.sh's stack was up (see README.md here).

    python screenshot.py LS_URL USER PASSWORD TOKEN PROJECT_ID OUT.png

The Data Manager hides the prediction columns by default: the view is set (through LS's API, with the
token) to show the prediction score and results, sorted by score ascending (the review order).
"""

import json
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

url, user, password, token, project, out = sys.argv[1:7]
SHOW = {"tasks:predictions_score", "tasks:predictions_results", "tasks:predictions_model_versions"}
ROWS = (By.CSS_SELECTOR, "[class*=dm-table__row], [class*=table-row]")


def api(path, body=None, method="GET"):
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(), method=method,
                                 headers={"Authorization": f"Token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


opts = webdriver.ChromeOptions()
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
    opts.add_argument(arg)
opts.binary_location = "/usr/bin/chromium"
driver = webdriver.Chrome(service=webdriver.ChromeService("/usr/bin/chromedriver"), options=opts)
try:
    wait = WebDriverWait(driver, 60)
    driver.get(f"{url}/user/login/")
    wait.until(EC.presence_of_element_located((By.NAME, "email"))).send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    wait.until(lambda d: "/user/login" not in d.current_url)
    driver.get(f"{url}/projects/{project}/data")  # the first visit creates the Data Manager's default view
    wait.until(EC.presence_of_element_located(ROWS))
    view = api(f"/api/dm/views/?project={project}")[0]
    data = view["data"]
    data["hiddenColumns"]["explore"] = [c for c in data["hiddenColumns"]["explore"] if c not in SHOW]
    data["ordering"] = ["tasks:predictions_score"]
    api(f"/api/dm/views/{view['id']}/", {"data": data, "project": int(project)}, "PATCH")
    driver.get(f"{url}/projects/{project}/data?tab={view['id']}")
    wait.until(EC.presence_of_element_located(ROWS))
    time.sleep(4)  # the grid fills its cells after the rows appear
    driver.save_screenshot(out)
    print("saved", out, driver.current_url)
finally:
    driver.quit()
