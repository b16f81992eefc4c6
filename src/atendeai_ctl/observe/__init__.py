"""Watching the running stack: the figures behind `atendeai top`.

    exposition.py   Prometheus text format -> Scrape; rates and quantiles from two scrapes
    prometheus.py   Prometheus's HTTP API (query, query_range), answers checked strictly
    sources.py      the Source interface and its two implementations: Prometheus (when the
                    monitoring profile runs) and the services themselves (/metrics, SQL, INFO)
    snapshot.py     the catalogue of figures, the snapshot document and its stable keys

No Typer or Rich here: the CLI (cli/top.py) draws what these return.
"""
