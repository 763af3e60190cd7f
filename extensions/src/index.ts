/**
 * @fedhem/lab: the "Federation" sidebar of FedHem.
 *
 * Shows the federation's sites, the catalog of columns (click one to insert its name into the
 * active cell), each site's privacy policy in plain words, and this user's query activity with its
 * privacy outcome. Data comes from the FedHem server extension under `{base_url}fedhem/api/`.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { CodeEditor } from '@jupyterlab/codeeditor';
import { IConsoleTracker } from '@jupyterlab/console';
import { IEditorTracker } from '@jupyterlab/fileeditor';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { federationIcon } from './icon';
import { FederationPanel, SIDEBAR_ID } from './panel';

export { FederationPanel, SIDEBAR_ID } from './panel';
export { requestAPI } from './api';

namespace CommandIDs {
  export const open = 'fedhem:open-sidebar';
  export const refresh = 'fedhem:refresh';
}

/** Insert `text` at the cursor (replacing any selection) and give the editor focus. */
export function insertAtCursor(editor: CodeEditor.IEditor, text: string): void {
  if (editor.replaceSelection) {
    editor.replaceSelection(text);
  } else {
    const offset = editor.getOffsetAt(editor.getCursorPosition());
    editor.model.sharedModel.updateSource(offset, offset, text);
    const position = editor.getPositionAt(offset + text.length);
    if (position) {
      editor.setCursorPosition(position);
    }
  }
  editor.focus();
}

interface IEditorTarget {
  editor: CodeEditor.IEditor;
  widget: Widget;
  prepare?: () => void;
}

/**
 * The editor a column name should go to: the active cell of the notebook in the main area, else
 * the file editor or console there, else the last notebook, file editor or console used.
 */
function findEditor(
  app: JupyterFrontEnd,
  notebooks: INotebookTracker | null,
  editors: IEditorTracker | null,
  consoles: IConsoleTracker | null
): IEditorTarget | null {
  const current = app.shell.currentWidget;
  const candidates: Array<() => IEditorTarget | null> = [];
  const notebookCandidate = () => {
    const panel = notebooks?.currentWidget;
    const cell = panel?.content.activeCell;
    if (!panel || !cell || !cell.editor) {
      return null;
    }
    return {
      editor: cell.editor,
      widget: panel as Widget,
      prepare: () => {
        if (cell.model.type === 'markdown') {
          (cell as any).rendered = false;
        }
        panel.content.mode = 'edit';
      }
    };
  };
  const fileCandidate = () => {
    const doc = editors?.currentWidget;
    return doc ? { editor: doc.content.editor, widget: doc as Widget } : null;
  };
  const consoleCandidate = () => {
    const panel = consoles?.currentWidget;
    const editor = panel?.console.promptCell?.editor;
    return panel && editor ? { editor, widget: panel as Widget } : null;
  };
  // The main-area widget the user worked in last comes first.
  if (current && notebooks?.currentWidget === current) {
    candidates.unshift(notebookCandidate);
  } else if (current && editors?.currentWidget === current) {
    candidates.unshift(fileCandidate);
  } else if (current && consoles?.currentWidget === current) {
    candidates.unshift(consoleCandidate);
  }
  candidates.push(notebookCandidate, fileCandidate, consoleCandidate);
  for (const candidate of candidates) {
    const found = candidate();
    if (found) {
      return found;
    }
  }
  return null;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: '@fedhem/lab:sidebar',
  description: 'The FedHem "Federation" sidebar: sites, catalog, policies and query activity.',
  autoStart: true,
  optional: [
    ILayoutRestorer,
    ICommandPalette,
    INotebookTracker,
    IEditorTracker,
    IConsoleTracker
  ],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    notebooks: INotebookTracker | null,
    editors: IEditorTracker | null,
    consoles: IConsoleTracker | null
  ) => {
    const panel = new FederationPanel({
      serverSettings: app.serviceManager.serverSettings,
      insertText: (text: string) => {
        const target = findEditor(app, notebooks, editors, consoles);
        if (!target) {
          return false;
        }
        app.shell.activateById(target.widget.id);
        target.prepare?.();
        insertAtCursor(target.editor, text);
        return true;
      }
    });
    app.shell.add(panel, 'left', { rank: 850, type: 'FedHem Federation' });
    if (restorer) {
      restorer.add(panel, SIDEBAR_ID);
    }

    // A cell finished: its query (if any) is already in the activity file.
    NotebookActions.executed.connect(() => {
      if (panel.isVisible) {
        panel.scheduleActivityRefresh();
      }
    });

    app.commands.addCommand(CommandIDs.open, {
      label: 'Show the FedHem Federation sidebar',
      icon: federationIcon,
      execute: () => {
        app.shell.activateById(SIDEBAR_ID);
      }
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh the FedHem Federation sidebar',
      execute: () => panel.refresh()
    });
    if (palette) {
      palette.addItem({ command: CommandIDs.open, category: 'FedHem' });
      palette.addItem({ command: CommandIDs.refresh, category: 'FedHem' });
    }
  }
};

export default plugin;
