//! Serving images: handing a volume or an exported snapshot to the shard that will own its LUN
//! (its logical unit built with the settings and records kept for it: APTPL reservations, a
//! sanitize operation to resume), telling the login threads about its target, and taking it
//! back; and keeping those settings and records in step with the catalog's names (a rename
//! copies them before its record and removes the old name's after it; a start drops what a
//! crash left under a name no image has).

use super::*;

impl Daemon {
    /// The logical unit of `target`, with what its records kept across a restart (APTPL
    /// reservations, a sanitize operation in progress or failed), and the files they are kept
    /// in. A record that cannot be read is an error: serving the volume without its
    /// reservation could let a fenced cluster node write, and without its sanitize state would
    /// serve data an initiator was told is being erased.
    pub(super) fn logical_unit(
        &self,
        info: LunInfo,
        target: &str,
    ) -> Result<(LogicalUnit, RecordFiles), AdminError> {
        let mut lu = LogicalUnit::new(info);
        let Some(dir) = &self.records_dir else {
            return Ok((lu, RecordFiles::default()));
        };
        let reservations = records::RESERVATIONS.path(dir, target);
        let sanitize = records::SANITIZE.path(dir, target);
        if let Some(record) = records::load::<PrRecord>(&reservations).map_err(internal)? {
            let (state, ports) =
                PrState::from_record(&record, |port| self.registry.nexus_of_port(port, target))
                    .map_err(|e| internal(format!("{}: {e}", reservations.display())))?;
            lu = lu.with_reservations(state, ports);
        }
        if let Some(state) = records::load::<SanitizeState>(&sanitize).map_err(internal)? {
            lu = lu.with_sanitize(state);
        }
        let files = RecordFiles {
            reservations: Some(reservations),
            sanitize: Some(sanitize),
        };
        Ok((lu, files))
    }

    /// The sanitize state kept for `target`, if any.
    fn sanitize_record(&self, target: &str) -> Result<Option<SanitizeState>, AdminError> {
        let Some(dir) = &self.records_dir else {
            return Ok(None);
        };
        records::load(&records::SANITIZE.path(dir, target)).map_err(internal)
    }

    /// Forgets the records kept for `target` (its image is deleted).
    pub(super) fn drop_records(&self, target: &str) -> Result<(), AdminError> {
        let Some(dir) = &self.records_dir else {
            return Ok(());
        };
        for kind in records::ALL_KINDS {
            records::remove(&kind.path(dir, target)).map_err(internal)?;
        }
        Ok(())
    }

    /// Whether volume `name` has a sanitize operation in progress: from its record, so also
    /// while the volume is not served (the erase resumes when it is).
    pub(super) fn sanitizing(&self, name: &str) -> Result<bool, AdminError> {
        let state = self.sanitize_record(&target_name(name))?;
        Ok(matches!(state, Some(SanitizeState::Running { .. })))
    }

    /// Gives the catalog back the map of image `image` that [`Daemon::unserve`] took from its
    /// shard (if it was served); the reservation it held, to serve it again with.
    pub(super) fn put_back(
        st: &mut State,
        image: u64,
        removed: Option<(ExtentMap, u64)>,
    ) -> Option<u64> {
        let (map, reserved) = removed?;
        st.pool.put_map(image, map);
        Some(reserved)
    }

    /// Copies volume `from`'s settings and records to the name `to`, durably.
    pub(super) fn copy_volume_state(
        &self,
        st: &mut State,
        from: &str,
        to: &str,
    ) -> Result<(), AdminError> {
        st.settings.copy(from, to).map_err(internal)?;
        if let Some(dir) = &self.records_dir {
            for kind in records::ALL_KINDS {
                records::copy(
                    &kind.path(dir, &target_name(from)),
                    &kind.path(dir, &target_name(to)),
                )
                .map_err(internal)?;
            }
        }
        Ok(())
    }

    /// Removes the settings and records kept under volume name `name`, which no volume has
    /// now. A failure is logged: the next start drops them (see [`Daemon::drop_orphans`]).
    pub(super) fn forget_volume_state(&self, st: &mut State, name: &str) {
        if let Err(e) = st.settings.remove(name) {
            eprintln!("shoal: removing the settings of the former volume name {name}: {e}");
        }
        if let Err(e) = self.drop_records(&target_name(name)) {
            eprintln!(
                "shoal: removing the records of the former volume name {name}: {}",
                e.message
            );
        }
    }

    /// Drops the settings and APTPL records of names no image has: what a crash left of a
    /// rename or a delete (they are copied or removed around the catalog record), which a new
    /// volume of that name must not inherit.
    pub(super) fn drop_orphans(&self, st: &mut State) -> Result<(), AdminError> {
        let volumes: HashSet<String> = st
            .pool
            .images()
            .filter(|m| m.kind == ImageKind::Volume)
            .map(|m| m.name.clone())
            .collect();
        let dropped = st
            .settings
            .retain(|name| volumes.contains(name))
            .map_err(internal)?;
        for name in dropped {
            eprintln!("shoal: dropped the settings of {name}: no such volume");
        }
        if let Some(dir) = &self.records_dir {
            for kind in records::ALL_KINDS {
                let targets: HashSet<PathBuf> = st
                    .pool
                    .images()
                    .map(|m| kind.path(dir, &target_name(&m.name)))
                    .collect();
                let dropped = kind
                    .retain(dir, |path| targets.contains(path))
                    .map_err(internal)?;
                for path in dropped {
                    eprintln!(
                        "shoal: removed {}: no such volume or snapshot",
                        path.display()
                    );
                }
            }
        }
        Ok(())
    }

    /// Makes volume `meta` full (its shard reserves a pool extent for every extent it does not
    /// own alone, then the catalog records it; 409 `no_space` when the pool cannot) or thin
    /// (the catalog records it, then the shard gives the reservation back). A conversion to
    /// full that fails otherwise than for space (the shard's walk outlasting the wait included)
    /// is undone on the shard, so that it never reserves for a volume the catalog says is
    /// thin. A crash in between leaves what the catalog says, which the next start applies.
    pub(super) fn set_provisioning(
        &self,
        st: &mut State,
        meta: &ImageMeta,
        full: bool,
    ) -> Result<(), AdminError> {
        if meta.thin != full {
            return Ok(());
        }
        let served = st.served.get(&meta.image).cloned().ok_or_else(|| {
            AdminError::new(
                ErrorCode::Conflict,
                format!("volume {} is not served", meta.name),
            )
        })?;
        let ask = |full: bool| {
            self.ask(served.shard, |reply| ShardMsg::Provision {
                target: served.target.clone(),
                full,
                reply,
            })
        };
        // After a failed conversion to full, the shard may still reserve the space (its walk
        // outlived the wait, or the catalog refused the record): making it thin again gives
        // the reservation back, and drops a walk still in progress.
        let undo = |why: &str| {
            if let Err(e) = ask(false) {
                eprintln!(
                    "shoal: volume {}: giving back its reservation after {why}: {e}",
                    meta.name
                );
            }
        };
        if full {
            match ask(true) {
                Ok(_) => {}
                // The pool's refusal: nothing was reserved.
                Err(e @ ProvisionError::NoSpace { .. }) => {
                    return Err(AdminError::new(
                        ErrorCode::NoSpace,
                        format!("volume {}: {e}", meta.name),
                    ));
                }
                Err(e) => {
                    undo(&e.to_string());
                    return Err(internal(format!("volume {}: {e}", meta.name)));
                }
            }
            if let Err(e) = st.pool.set_thin(meta.image, false) {
                undo("the catalog failed to record it full");
                return Err(pool_error(e));
            }
        } else {
            st.pool.set_thin(meta.image, true).map_err(pool_error)?;
            ask(false).map_err(internal)?;
        }
        Ok(())
    }

    /// Deletes snapshot `meta`: withdraws its export, removes it from the catalog, forgets its
    /// reservations, and gives back what its full volume no longer needs reserved.
    pub(super) fn remove_snapshot(
        &self,
        st: &mut State,
        meta: &ImageMeta,
    ) -> Result<(), AdminError> {
        self.unserve(st, meta.image, false)?;
        st.pool.delete(meta.image).map_err(pool_error)?;
        // A snapshot of the same name made later starts unreserved.
        self.drop_records(&snapshot_target(&meta.name))?;
        // The snapshot may have pinned a full volume's data: what the volume owns alone again
        // no longer needs reserved space.
        let volume = settings::volume_of(&meta.name);
        if let Ok(volume) = Self::volume_meta(st, volume)
            && !volume.thin
        {
            // The snapshot's references are released at publication (after the journals are
            // synced): publish them, so that the measurement sees them gone.
            st.pool.publish_frees().map_err(pool_error)?;
            self.trim_reservation(st, &volume);
        }
        Ok(())
    }

    /// Hands image `meta` (its map taken from the pool) to a shard as `target`.
    pub(super) fn serve(
        &self,
        st: &mut State,
        meta: &ImageMeta,
        target: String,
        read_only: bool,
    ) -> Result<(), AdminError> {
        self.serve_reserved(st, meta, target, read_only, 0)
    }

    /// [`Daemon::serve`] for a full volume holding `reserved` extents of the pool.
    pub(super) fn serve_reserved(
        &self,
        st: &mut State,
        meta: &ImageMeta,
        target: String,
        read_only: bool,
        reserved: u64,
    ) -> Result<(), AdminError> {
        let extent_size = st.pool.shared().extent_size as u32;
        let info = LunInfo {
            extent_size,
            lun: 0,
            volume_name: meta.name.clone(),
            target_name: target.clone(),
            relative_port_id: 1,
            block_size: meta.block_size,
            // One logical block per physical block: libiscsi's GET LBA STATUS test assumes it, and
            // the unmap granularity (VPD B0h) already tells initiators the extent size.
            physical_block_size: meta.block_size,
            num_blocks: meta.size_bytes / u64::from(meta.block_size),
            naa: naa_designator(&meta.identity),
            serial: meta.identity.iter().map(|b| format!("{b:02x}")).collect(),
            // A snapshot is always read-only; a volume when its administrator says so.
            read_only: read_only || st.settings.read_only(&meta.name),
            thin: meta.thin,
            // Every serve (start, create, clone, rollback) takes the volume's setting here.
            write_cache: st.write_cache(&meta.name),
            max_transfer_blocks: (self.max_transfer_bytes / u64::from(meta.block_size)) as u32,
            max_atomic_blocks: (crate::storage::pool::thin::MAX_ATOMIC_WRITE
                .min(self.max_transfer_bytes)
                / u64::from(meta.block_size)) as u32,
        };
        // Everything that can fail comes before the map leaves the catalog: a map dropped on an
        // error path would release its extents to the pool while the catalog still names them.
        let (lu, records) = self.logical_unit(info, &target)?;
        let journal = st.pool.volume_journal(meta.image).map_err(pool_error)?;
        let journal = OpenJournal::open(journal).map_err(internal)?;
        let map = match meta.kind {
            ImageKind::Volume => st.pool.take_map(meta.image),
            ImageKind::Snapshot => st.pool.map(meta.image).map(ExtentMap::snapshot),
        }
        .ok_or_else(|| internal(format!("image {} has no map", meta.name)))?;
        let volume = ThinVolume::with_journal(
            meta.image,
            map,
            Arc::clone(st.pool.shared()),
            journal,
            meta.size_bytes,
            meta.block_size,
            read_only,
        )
        .with_reservation(!meta.thin, reserved);
        let shard = least_loaded_shard(&st.served, self.shards.len(), st.next_shard);
        st.next_shard += 1;
        let slot = LunSlot {
            target: target.clone(),
            lu,
            volume: Box::new(volume),
            stats: Default::default(),
            records,
            qos: Throttle::new(st.settings.qos(&meta.name).limits()),
        };
        if !self.shards[shard].send(ShardMsg::AddLun(Box::new(slot))) {
            return Err(internal("shard is gone"));
        }
        self.login
            .add_target(Self::target_entry(st, &target, &meta.name, shard));
        let alias = meta.name.clone();
        st.served.insert(
            meta.image,
            Served {
                shard,
                target,
                alias,
            },
        );
        Ok(())
    }

    /// Sends shard `shard` the message `msg` builds around a reply channel and waits (at most
    /// `SHARD_TIMEOUT`) for its answer.
    pub(super) fn ask<T, E: From<String>>(
        &self,
        shard: usize,
        msg: impl FnOnce(crossbeam::channel::Sender<Result<T, E>>) -> ShardMsg,
    ) -> Result<T, E> {
        let (tx, rx): (_, Receiver<Result<T, E>>) = bounded(1);
        if !self.shards.get(shard).is_some_and(|s| s.send(msg(tx))) {
            return Err(E::from("shard is gone".to_string()));
        }
        rx.recv_timeout(SHARD_TIMEOUT)
            .map_err(|_| E::from("shard did not answer".to_string()))?
    }

    /// What the login threads know of a target: its volume's access list and CHAP credentials
    /// (an exported snapshot `volume@snap` has its volume's).
    pub(super) fn target_entry(st: &State, target: &str, alias: &str, shard: usize) -> TargetEntry {
        let volume = settings::volume_of(alias);
        TargetEntry {
            name: target.to_string(),
            alias: alias.to_string(),
            shard,
            initiators: st.settings.initiators(volume).to_vec(),
            chap: st.settings.chap_policy(volume),
        }
    }

    /// Stops serving image `image`; returns its map (for volumes).
    pub(super) fn unserve(
        &self,
        st: &mut State,
        image: u64,
        force: bool,
    ) -> Result<Option<(ExtentMap, u64)>, AdminError> {
        let Some(s) = st.served.get(&image).cloned() else {
            return Ok(None);
        };
        self.login.remove_target(&s.target);
        let target = s.target.clone();
        match self.ask(s.shard, |reply| ShardMsg::RemoveLun {
            target,
            force,
            reply,
        }) {
            Ok(map) => {
                st.served.remove(&image);
                Ok(map)
            }
            Err(e) => {
                // Still served: export it again.
                self.login
                    .add_target(Self::target_entry(st, &s.target, &s.alias, s.shard));
                Err(AdminError::new(
                    ErrorCode::InUse,
                    format!("{}: {e}", s.target),
                ))
            }
        }
    }
}
