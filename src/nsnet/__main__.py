from nsnet.cli import main

raise SystemExit(main())
