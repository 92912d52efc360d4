from ftmix.cli import main

main()
