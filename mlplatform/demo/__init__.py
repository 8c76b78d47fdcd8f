"""The demo (``mlplatform demo``), apart from the product: it runs the bundled examples' history in-process
(:mod:`.runner`), summarises it (:mod:`.summary`), and lives the planned production weeks through the real REST
service (:mod:`.production`, :mod:`.plan`). :mod:`.synthetic` makes the ``churn_shift`` example's data.
Nothing in the product imports this package; the CLI's ``demo`` command is its one door."""
