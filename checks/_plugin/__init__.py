"""The suite's machinery, loaded from the root conftest through `pytest_plugins`.

    options   command-line options, the typed SuiteConfig in config.stash, markers, timeouts
    verdicts  pass / warn / fail, inconclusive skips, the --gate rule, the terminal summary
    report    the default HTML report, evidence rendered into pytest-html and Allure, redaction
    redact    removing secrets from every text that leaves the process
    charts    the inline SVG latency chart
"""
