"""The load tester's views, all in one room: the console summary and live progress
(`console`), the HTML report (`html`, with its `charts`), compare's tables and page
(`compare`, `compare_html`), one page style (`page`) and one import of Plotly (`figures`).

Every view is a function of what engine/loadtest produced (results, documents, compare's
report); nothing in engine/loadtest imports this package back.
"""
