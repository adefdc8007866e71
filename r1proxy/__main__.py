from r1proxy.cli import main

raise SystemExit(main())
