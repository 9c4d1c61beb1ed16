from wmhseg.cli import main

main()
