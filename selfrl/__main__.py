from selfrl.cli import main

raise SystemExit(main())
