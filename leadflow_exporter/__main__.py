from leadflow_exporter.cli import main

raise SystemExit(main())
