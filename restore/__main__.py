from restore.main import main

main()
